//! `message.received` → conversations, through the real consumer on the in-process bus.

use crate::helpers::*;
use postvak_core::access::InboxRole;

#[tokio::test]
async fn a_received_mail_opens_a_conversation_whose_participants_are_the_members_then() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let first = env
            .deliver(
                env.inbox,
                &mail("m1@example.org", "Printer on fire", "", "It burns."),
            )
            .await;
        assert!(first.new_thread);
        env.wait_for_conversation(first.conversation_id, 1).await;

        // Someone joins the inbox after the conversation started.
        let carol = env.agent("carol@acme.test", InboxRole::Reply).await;
        let reply = env
            .deliver(
                env.inbox,
                &mail(
                    "m2@example.org",
                    "Re: Printer on fire",
                    "In-Reply-To: <m1@example.org>\r\nReferences: <m1@example.org>",
                    "Still burning.",
                ),
            )
            .await;
        assert_eq!(reply.conversation_id, first.conversation_id);
        env.wait_for_conversation(first.conversation_id, 2).await;

        let c = env
            .service
            .get(&env.ctx, first.conversation_id)
            .await
            .unwrap();
        assert_eq!(
            c.conversation.subject.as_deref(),
            Some("Printer on fire"),
            "{backend:?}"
        );
        assert_eq!(c.conversation.status, "open");
        assert_eq!(c.conversation.contacts[0].address, "eve@example.org");
        for u in [env.alice.id, env.bob.id, env.reader.id] {
            assert!(c.conversation.participants.contains(&u), "{backend:?}");
        }
        assert!(
            !c.conversation.participants.contains(&carol.id),
            "{backend:?}: later member"
        );
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[1].snippet, "Still burning.");
        assert_eq!(c.conversation.version, 3, "opened + two messages");

        // A redelivery of the same mail changes nothing.
        let again = env
            .deliver(
                env.inbox,
                &mail("m1@example.org", "Printer on fire", "", "It burns."),
            )
            .await;
        assert!(again.duplicate);
        let c2 = env
            .service
            .get(&env.ctx, first.conversation_id)
            .await
            .unwrap();
        assert_eq!(c2.conversation.version, 3);
    }
}

#[tokio::test]
async fn personal_data_is_not_stored_in_plaintext_in_the_read_models() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let d = env
        .deliver(
            env.inbox,
            &mail(
                "canary@example.org",
                "Zebracanary subject",
                "",
                "Quokkacanary body",
            ),
        )
        .await;
    env.wait_for_conversation(d.conversation_id, 1).await;
    let path = env.url.trim_start_matches("sqlite://").to_owned();
    // Checkpoint the WAL so every byte is in the main file, then search all files.
    let dir = std::path::Path::new(&path).parent().unwrap().to_owned();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for word in ["Zebracanary", "Quokkacanary", "eve@example.org"] {
            assert!(
                !bytes.windows(word.len()).any(|w| w == word.as_bytes()),
                "{word} found in plaintext"
            );
        }
    }
}

/// A burst of interleaved threads: each conversation gets its mails in the order they
/// arrived. (Whether the worker filed them concurrently depends on how many it found queued
/// at once, which the test does not control; the grouping that keeps one conversation's mails
/// in order is `core::batch::group_in_order`, unit-tested there.)
#[tokio::test]
async fn a_burst_of_threads_is_filed_each_in_arrival_order() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let threads = ["a", "b", "c", "d"];
        let mut ids = Vec::new();
        for t in threads {
            let d = env
                .deliver(
                    env.inbox,
                    &mail(
                        &format!("{t}0@example.org"),
                        &format!("Thread {t}"),
                        "",
                        &format!("{t} 0"),
                    ),
                )
                .await;
            ids.push(d.conversation_id);
        }
        for n in 1..5 {
            for (t, id) in threads.iter().zip(&ids) {
                let d = env
                    .deliver(
                        env.inbox,
                        &mail(
                            &format!("{t}{n}@example.org"),
                            &format!("Re: Thread {t}"),
                            &format!("In-Reply-To: <{t}{}@example.org>", n - 1),
                            &format!("{t} {n}"),
                        ),
                    )
                    .await;
                assert_eq!(d.conversation_id, *id, "{backend:?}");
            }
        }
        for (t, id) in threads.iter().zip(&ids) {
            env.wait_for_conversation(*id, 5).await;
            let c = env.service.get(&env.ctx, *id).await.unwrap();
            let snippets: Vec<&str> = c.messages.iter().map(|m| m.snippet.as_str()).collect();
            let expected: Vec<String> = (0..5).map(|n| format!("{t} {n}")).collect();
            assert_eq!(snippets, expected, "{backend:?}");
            assert_eq!(
                c.conversation.version, 6,
                "{backend:?}: opened + five messages"
            );
        }
    }
}
