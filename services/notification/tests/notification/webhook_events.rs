//! Every Help Scout-style event name the issue lists is emitted: one subscription to all of
//! them, one conversation taken through each change by the real conversation service, and each
//! delivery checked by a receiver that verifies signatures exactly as a Standard Webhooks
//! consumer does (it refuses a bad one with 400, which the test would see as missing).

use crate::helpers::*;
use crate::receiver::{Mode, Receiver};
use postvak_core::conversation::{Actor, ConversationCommand, Status};
use postvak_notification::{NotificationSettings, WebhookSettings};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const LISTED: [&str; 7] = [
    "convo.created",
    "convo.assigned",
    "convo.customer.reply.created",
    "convo.agent.reply.created",
    "convo.note.created",
    "convo.status",
    "convo.tags",
];

fn sha_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Quick retries, and the test receivers on loopback allowed.
fn settings() -> NotificationSettings {
    NotificationSettings {
        webhooks: WebhookSettings {
            timeout_ms: 2_000,
            retry_base_ms: 100,
            retry_max_ms: 300,
            allow_private: vec!["127.0.0.1/32".into()],
            ..WebhookSettings::default()
        },
        ..Default::default()
    }
}

fn now_us() -> i64 {
    postvak_platform::store::micros(time::OffsetDateTime::now_utc())
}

#[tokio::test]
async fn each_listed_event_is_delivered_signed_to_its_subscriber() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let t = &env.acme;
        let r = Receiver::start(Mode::Accept, env.cancel.clone()).await;
        let resp = app
            .call(
                "POST",
                "/v1/webhooks",
                &t.admin,
                Some(json!({"url": r.url, "events": LISTED})),
            )
            .await;
        assert_eq!(resp.status, 201, "{:?}", resp.body);
        r.set_secret(resp.body["secret"].as_str().unwrap());

        // The customer's mail carries a file, and so does the agent's reply.
        let raw = format!(
            "From: Eve <eve@example.org>\r\nTo: {}\r\nSubject: Events\r\nMessage-ID: <events@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nHello.\r\n\
             --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n",
            t.address
        );
        let d = env.deliver(t, raw.as_bytes()).await;
        let id = d.conversation_id;
        let note = uuid::Uuid::now_v7();
        env.service
            .change(&t.ctx, id, None, |_| {
                Ok(vec![
                    ConversationCommand::Assign {
                        assignee: t.alice.id,
                        by: Actor::Admin(t.admin.id),
                        at_us: now_us(),
                    },
                    ConversationCommand::AddNote {
                        note_id: note,
                        body: "internal".into(),
                        mentions: vec![],
                        by: Actor::Admin(t.admin.id),
                        at_us: now_us(),
                    },
                    ConversationCommand::AddTag {
                        tag: "billing".into(),
                        by: Actor::Admin(t.admin.id),
                        at_us: now_us(),
                    },
                    ConversationCommand::SetStatus {
                        status: Status::Pending,
                        by: Actor::Admin(t.admin.id),
                        at_us: now_us(),
                    },
                ])
            })
            .await
            .unwrap();
        let reply = app
            .call(
                "POST",
                &format!("/v1/conversations/{id}/replies"),
                &t.alice,
                Some(json!({
                    "body": "Answered.",
                    "attachments": [{"filename": "answer.txt", "content_type": "text/plain",
                                     "content_base64": "QW5zd2VyZWQu"}]
                })),
            )
            .await;
        assert_eq!(reply.status, 201, "{backend:?} {:?}", reply.body);

        let mut ids = BTreeSet::new();
        for name in LISTED {
            let got = r.wait_for(name, Duration::from_secs(20)).await;
            assert_eq!(got.body["type"], name, "{backend:?}");
            assert_eq!(
                got.body["data"]["conversation_id"],
                id.to_string(),
                "{backend:?} {name}"
            );
            assert_eq!(got.body["data"]["inbox_id"], t.inbox.to_string(), "{name}");
            ids.insert(got.id.clone());
        }
        assert_eq!(ids.len(), LISTED.len(), "one webhook-id per delivery");
        let by_type = |n: &str| {
            r.received()
                .into_iter()
                .find(|x| x.body["type"] == n)
                .unwrap()
                .body
        };
        assert_eq!(
            by_type("convo.assigned")["data"]["event"]["assignee"],
            t.alice.id.to_string()
        );
        assert_eq!(by_type("convo.tags")["data"]["event"]["tag"], "billing");
        assert_eq!(
            by_type("convo.status")["data"]["event"]["status"],
            "pending"
        );
        assert_eq!(
            by_type("convo.note.created")["data"]["event"]["note_id"],
            note.to_string()
        );
        // Message events list their attachments: metadata only, never the content.
        let customer = by_type("convo.customer.reply.created");
        let files = customer["data"]["attachments"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{backend:?} {customer}");
        assert_eq!(files[0]["filename"], "scan.pdf");
        assert_eq!(files[0]["content_type"], "application/pdf");
        assert_eq!(files[0]["size"], 9);
        assert_eq!(files[0]["sha256"], sha_hex(b"%PDF-1.4\n"));
        assert!(files[0]["id"].as_str().is_some());
        let agent = by_type("convo.agent.reply.created");
        let files = agent["data"]["attachments"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{backend:?} {agent}");
        assert_eq!(files[0]["filename"], "answer.txt");
        assert_eq!(files[0]["content_type"], "text/plain");
        assert_eq!(files[0]["size"], 9);
        assert_eq!(files[0]["sha256"], sha_hex(b"Answered."));
        let reply_files = &reply.body["attachment_list"];
        assert_eq!(files[0]["id"], reply_files[0]["id"], "{:?}", reply.body);
        assert!(
            !agent.to_string().contains("QW5zd2VyZWQu"),
            "no content in a payload: {agent}"
        );
        // Other events carry no list.
        assert!(by_type("convo.tags")["data"].get("attachments").is_none());
        assert_eq!(r.bad_signatures(), 0, "{backend:?}");
    }
}

/// The fan-out reads a batch's subscriptions and inboxes once and writes its deliveries
/// together; each event must still be announced with the inbox the conversation was in at
/// that event. A note, a move to another inbox and a second note are appended together (one
/// consumer batch): a subscription limited to the second inbox gets only the second note, an
/// unlimited one gets both, each with its own inbox.
#[tokio::test]
async fn events_appended_together_carry_the_inbox_of_their_moment() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let t = &env.acme;
        let sales = env
            .directory
            .create_inbox(&t.ctx, "Sales", &["sales@acme.test".to_owned()])
            .await
            .unwrap()
            .id;
        let all = Receiver::start(Mode::Accept, env.cancel.clone()).await;
        let only_sales = Receiver::start(Mode::Accept, env.cancel.clone()).await;
        let mut hooks = Vec::new();
        for (r, inbox) in [(&all, None), (&only_sales, Some(sales))] {
            let resp = app
                .call(
                    "POST",
                    "/v1/webhooks",
                    &t.admin,
                    Some(
                        json!({"url": r.url, "events": ["convo.note.created"], "inbox_id": inbox}),
                    ),
                )
                .await;
            assert_eq!(resp.status, 201, "{:?}", resp.body);
            r.set_secret(resp.body["secret"].as_str().unwrap());
            hooks.push(resp.body["id"].as_str().unwrap().to_owned());
        }
        let d = env
            .deliver(
                t,
                &mail(&t.address, "moved@example.org", "Moved", "", "Hi."),
            )
            .await;
        let id = d.conversation_id;
        let (before, after) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let note = |note_id| ConversationCommand::AddNote {
            note_id,
            body: "internal".into(),
            mentions: vec![],
            by: Actor::Admin(t.admin.id),
            at_us: now_us(),
        };
        env.service
            .change(&t.ctx, id, None, |_| {
                Ok(vec![
                    note(before),
                    ConversationCommand::Move {
                        to_inbox: sales,
                        members: vec![],
                        by: Actor::Admin(t.admin.id),
                        at_us: now_us(),
                    },
                    note(after),
                ])
            })
            .await
            .unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while all.received().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inbox_of = |r: &Receiver, note: uuid::Uuid| {
            r.received()
                .into_iter()
                .find(|x| x.body["data"]["event"]["note_id"] == note.to_string())
                .map(|x| x.body["data"]["inbox_id"].clone())
        };
        assert_eq!(
            inbox_of(&all, before),
            Some(json!(t.inbox.to_string())),
            "{backend:?}"
        );
        assert_eq!(
            inbox_of(&all, after),
            Some(json!(sales.to_string())),
            "{backend:?}"
        );
        let got = only_sales
            .wait_for("convo.note.created", Duration::from_secs(20))
            .await;
        assert_eq!(got.body["data"]["event"]["note_id"], after.to_string());
        // Deliveries are recorded in the fan-out's transaction: by now every one exists.
        let listed = app
            .call(
                "GET",
                &format!("/v1/webhooks/{}/deliveries", hooks[1]),
                &t.admin,
                None,
            )
            .await;
        assert_eq!(listed.status, 200);
        assert_eq!(
            listed.body["items"].as_array().map(Vec::len),
            Some(1),
            "{backend:?}: {:?}",
            listed.body
        );
        assert_eq!(all.bad_signatures() + only_sales.bad_signatures(), 0);
    }
}

/// The fan-out records where a batch leaves each conversation with one statement: a
/// conversation moved twice in one batch is in the second inbox for the events that follow.
#[tokio::test]
async fn a_conversation_moved_twice_in_one_batch_is_announced_in_its_last_inbox() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        env.start_notification(settings());
        let app = env.spawn_app().await;
        let t = &env.acme;
        let mut inboxes = Vec::new();
        for (name, address) in [
            ("Sales", "sales@acme.test"),
            ("Billing", "billing@acme.test"),
        ] {
            let inbox = env
                .directory
                .create_inbox(&t.ctx, name, &[address.to_owned()])
                .await
                .unwrap();
            inboxes.push(inbox.id);
        }
        let (sales, billing) = (inboxes[0], inboxes[1]);
        let receiver = Receiver::start(Mode::Accept, env.cancel.clone()).await;
        let resp = app
            .call(
                "POST",
                "/v1/webhooks",
                &t.admin,
                Some(json!({"url": receiver.url, "events": ["convo.note.created"]})),
            )
            .await;
        assert_eq!(resp.status, 201, "{:?}", resp.body);
        receiver.set_secret(resp.body["secret"].as_str().unwrap());
        let d = env
            .deliver(
                t,
                &mail(&t.address, "twice@example.org", "Twice", "", "Hi."),
            )
            .await;
        let id = d.conversation_id;
        let to = |to_inbox| ConversationCommand::Move {
            to_inbox,
            members: vec![],
            by: Actor::Admin(t.admin.id),
            at_us: now_us(),
        };
        let note = |note_id| ConversationCommand::AddNote {
            note_id,
            body: "internal".into(),
            mentions: vec![],
            by: Actor::Admin(t.admin.id),
            at_us: now_us(),
        };
        let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        env.service
            .change(&t.ctx, id, None, |_| {
                Ok(vec![to(sales), to(billing), note(first)])
            })
            .await
            .unwrap();
        // Once the first note is delivered its batch is committed; the second note (a batch
        // of its own, naming no inbox) is announced with the inbox stored for the conversation.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while receiver.received().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env.service
            .change(&t.ctx, id, None, |_| Ok(vec![note(second)]))
            .await
            .unwrap();
        while receiver.received().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inbox_of = |n: uuid::Uuid| {
            receiver
                .received()
                .into_iter()
                .find(|x| x.body["data"]["event"]["note_id"] == n.to_string())
                .map(|x| x.body["data"]["inbox_id"].clone())
        };
        let billing = Some(json!(billing.to_string()));
        assert_eq!(inbox_of(first), billing, "{backend:?}");
        assert_eq!(inbox_of(second), billing, "{backend:?}");
        assert_eq!(receiver.bad_signatures(), 0);
    }
}
