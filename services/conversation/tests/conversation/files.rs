//! Reply files that no stored message names (a crash between storing them and appending
//! `reply.queued`) are removed by the sweep once they are older than its grace period; the
//! files of a stored reply never are.

use crate::helpers::*;
use postvak_conversation::files;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn the_sweep_removes_only_old_reply_files_no_message_names() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let raw = b"From: Sam <sam@example.net>\r\nTo: Support <support@acme.test>\r\n\
                    Subject: Sweep\r\nMessage-ID: <sweep@x>\r\n\r\nHello.\r\n";
        let d = env.deliver(env.inbox, raw).await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let reply = app
            .post(
                &format!("/v1/conversations/{}/replies", d.conversation_id),
                &env.alice,
                json!({"body": "Attached.", "attachments": [
                    {"filename": "kept.txt", "content_type": "text/plain",
                     "content_base64": b64.encode(b"kept")}
                ]}),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?}: {reply:?}");
        let kept: Uuid = reply.body["attachment_list"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // Stored for a reply whose event never came.
        let orphan = files::store(
            &env.ctx,
            Uuid::now_v7(),
            &[files::NewFile {
                filename: "orphan.txt".into(),
                content_type: "text/plain".into(),
                bytes: b"orphan".to_vec(),
            }],
        )
        .await
        .unwrap()[0]
            .file_id;

        // Younger than the grace period: kept.
        let removed = files::sweep_unreferenced(&env.ctx, files::UNREFERENCED_GRACE)
            .await
            .unwrap();
        assert_eq!(removed, 0, "{backend:?}");
        assert!(files::read(&env.ctx, orphan).await.unwrap().is_some());

        // Past it: only the orphan goes.
        let removed = files::sweep_unreferenced(&env.ctx, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(removed, 1, "{backend:?}");
        assert_eq!(files::read(&env.ctx, orphan).await.unwrap(), None);
        assert_eq!(
            files::read(&env.ctx, kept).await.unwrap().as_deref(),
            Some(&b"kept"[..]),
            "{backend:?}: a stored reply's file was removed"
        );
    }
}
