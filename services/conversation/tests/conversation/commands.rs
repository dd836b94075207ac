//! `conversation.apply`: the command routing rules and timers change conversations with,
//! sent over the real bus to the server `start_consumers` runs.

use crate::helpers::*;
use postvak_core::access::TenantRole;
use postvak_platform::command::{SendCommandError, command_envelope, send_command};
use postvak_proto::command::conversation::{
    APPLY, ActionV1, ApplyReplyV1, ApplyV1, CauseKindV1, CauseV1, SERVICE,
};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn cause(kind: CauseKindV1) -> CauseV1 {
    CauseV1 {
        kind,
        id: Uuid::now_v7(),
        name: "VIP to Alice".into(),
    }
}

/// Sends `apply` under `key`, waiting (with a deadline) for the server to be subscribed.
async fn apply(env: &TestEnv, key: &str, body: &ApplyV1) -> Result<ApplyReplyV1, SendCommandError> {
    let bus = env.cells.default_cell().bus.clone();
    let envelope = command_envelope(env.tenant, key, None, body).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match send_command(
            bus.as_ref(),
            SERVICE,
            APPLY,
            &envelope,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(v) => return Ok(serde_json::from_value(v).unwrap()),
            Err(SendCommandError::Bus(e)) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn code(e: SendCommandError) -> String {
    match e {
        SendCommandError::Rejected(p) => p.code,
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn apply_changes_the_conversation_once_and_names_the_cause_in_the_metadata() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let d = env
            .deliver(
                env.inbox,
                &mail("c1@example.org", "Refund", "", "Money back?"),
            )
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let rule = cause(CauseKindV1::Rule);
        let trigger = Uuid::now_v7();
        let body = ApplyV1 {
            conversation_id: d.conversation_id,
            actions: vec![
                ActionV1::Assign { user: env.alice.id },
                ActionV1::AddTag {
                    tag: "billing".into(),
                },
                ActionV1::SetPriority {
                    priority: "high".into(),
                },
                ActionV1::AddTag {
                    tag: "billing".into(),
                },
                ActionV1::Note {
                    body: "Routed by rule".into(),
                },
            ],
            cause: rule.clone(),
            trigger_event_id: Some(trigger),
        };
        let first = apply(&env, "k-1", &body).await.unwrap();
        assert_eq!(first.changed, vec![0, 1, 2, 4], "{backend:?}: {first:?}");
        assert_eq!(first.skipped.len(), 1);
        assert_eq!(first.skipped[0].index, 3);
        assert_eq!(first.skipped[0].reason, "no_change");
        // The same key again: the stored answer, nothing applied twice.
        let again = apply(&env, "k-1", &body).await.unwrap();
        assert_eq!(again, first);

        let c = env.service.get(&env.ctx, d.conversation_id).await.unwrap();
        assert_eq!(c.conversation.assignee, Some(env.alice.id), "{backend:?}");
        assert_eq!(c.conversation.tags, vec!["billing".to_owned()]);
        assert_eq!(c.conversation.priority, "high");
        assert_eq!(c.notes.len(), 1);
        assert_eq!(c.conversation.version, first.version);

        // Every event the command appended names the rule.
        let loaded = env.service.load(&env.ctx, d.conversation_id).await.unwrap();
        let by_rule: Vec<_> = loaded
            .events
            .iter()
            .filter(|e| e.metadata.actor.as_deref() == Some(&format!("rule:{}", rule.id)))
            .collect();
        assert_eq!(by_rule.len(), 4, "{backend:?}");
        for e in &by_rule {
            assert_eq!(e.metadata.causation_id, Some(rule.id));
            assert_eq!(e.metadata.correlation_id, Some(trigger));
        }
        assert_eq!(
            by_rule
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
            [
                "conversation.assigned",
                "conversation.tagged",
                "conversation.priority_changed",
                "conversation.note_added"
            ]
        );

        // A timer closes it; a later rule action is then refused as closed.
        let timer = cause(CauseKindV1::Timer);
        let closed = apply(
            &env,
            "k-2",
            &ApplyV1 {
                conversation_id: d.conversation_id,
                actions: vec![ActionV1::SetStatus {
                    status: "closed".into(),
                }],
                cause: timer.clone(),
                trigger_event_id: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(closed.changed, vec![0]);
        let loaded = env.service.load(&env.ctx, d.conversation_id).await.unwrap();
        let last = loaded.events.last().unwrap();
        assert_eq!(last.metadata.actor, Some(format!("timer:{}", timer.id)));
        let refused = apply(
            &env,
            "k-3",
            &ApplyV1 {
                conversation_id: d.conversation_id,
                actions: vec![ActionV1::Unassign],
                cause: rule.clone(),
                trigger_event_id: None,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(code(refused), "conversation_closed");
    }
}

#[tokio::test]
async fn apply_refuses_unknown_conversations_bad_actions_and_reused_keys() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let missing = ApplyV1 {
            conversation_id: Uuid::now_v7(),
            actions: vec![ActionV1::Unassign],
            cause: cause(CauseKindV1::Rule),
            trigger_event_id: None,
        };
        let e = apply(&env, "m-1", &missing).await.unwrap_err();
        assert_eq!(code(e), "conversation_not_found", "{backend:?}");

        let d = env
            .deliver(env.inbox, &mail("c2@example.org", "Hello", "", "Hi"))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let bad = ApplyV1 {
            conversation_id: d.conversation_id,
            actions: vec![
                ActionV1::AddTag { tag: "ok".into() },
                ActionV1::SetPriority {
                    priority: "sky-high".into(),
                },
            ],
            cause: cause(CauseKindV1::Rule),
            trigger_event_id: None,
        };
        let e = apply(&env, "m-2", &bad).await.unwrap_err();
        assert_eq!(code(e), "invalid_action");
        // All or nothing: the tag of the refused command is not there.
        let c = env.service.get(&env.ctx, d.conversation_id).await.unwrap();
        assert!(c.conversation.tags.is_empty(), "{backend:?}");

        // The key of a refused command answers the same refusal, and a key can't be reused
        // for another payload.
        let good = ApplyV1 {
            actions: vec![ActionV1::AddTag { tag: "ok".into() }],
            ..bad.clone()
        };
        let e = apply(&env, "m-2", &good).await.unwrap_err();
        assert_eq!(code(e), "idempotency_key_reused");
    }
}

#[tokio::test]
async fn auto_reply_answers_a_customer_but_never_an_auto_reply_or_a_bounce() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let admin = env.user("admin@acme.test", TenantRole::Admin).await;
        let t = app
            .post(
                "/v1/templates",
                &admin,
                json!({"name": "Ack", "subject": "We got it", "body": "Hello {{contact.name}}, thanks. {{inbox.name}}"}),
            )
            .await;
        assert_eq!(t.status, 201, "{t:?}");
        let template_id: Uuid = t.body["id"].as_str().unwrap().parse().unwrap();

        let human = env
            .deliver(env.inbox, &mail("h1@example.org", "Help", "", "Please"))
            .await;
        let robot = env
            .deliver(
                env.inbox,
                &mail(
                    "r1@example.org",
                    "Out of office",
                    "Auto-Submitted: auto-replied",
                    "I am away",
                ),
            )
            .await;
        env.wait_for_conversation(human.conversation_id, 1).await;
        env.wait_for_conversation(robot.conversation_id, 1).await;
        let ack = |id| ApplyV1 {
            conversation_id: id,
            actions: vec![ActionV1::AutoReply { template_id }],
            cause: cause(CauseKindV1::Rule),
            trigger_event_id: None,
        };
        let r = apply(&env, "a-1", &ack(human.conversation_id))
            .await
            .unwrap();
        assert_eq!(r.changed, vec![0], "{backend:?}: {r:?}");
        let c = env
            .service
            .get(&env.ctx, human.conversation_id)
            .await
            .unwrap();
        let out = c
            .messages
            .iter()
            .find(|m| m.direction == "outbound")
            .unwrap();
        assert_eq!(out.subject.as_deref(), Some("We got it"));
        assert_eq!(
            out.body_text.as_deref(),
            Some("Hello Eve Customer, thanks. Support")
        );
        assert_eq!(out.to[0].address, "eve@example.org");
        assert_eq!(out.from[0].address, "support@acme.test");

        let r = apply(&env, "a-2", &ack(robot.conversation_id))
            .await
            .unwrap();
        assert!(r.changed.is_empty(), "{backend:?}: {r:?}");
        assert_eq!(r.skipped[0].reason, "auto_reply_suppressed");
        let c = env
            .service
            .get(&env.ctx, robot.conversation_id)
            .await
            .unwrap();
        assert!(c.messages.iter().all(|m| m.direction == "inbound"));

        let e = apply(
            &env,
            "a-3",
            &ApplyV1 {
                actions: vec![ActionV1::AutoReply {
                    template_id: Uuid::now_v7(),
                }],
                ..ack(human.conversation_id)
            },
        )
        .await
        .unwrap_err();
        assert_eq!(code(e), "template_not_found");
    }
}
