//! `/v1/stream` read by a real HTTP client: agent B sees agent A's presence and a new note;
//! resume with `Last-Event-ID`; heartbeats; a non-participant sees nothing of it.

use crate::helpers::*;
use postvak_core::access::InboxRole;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: bool,
}

struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(app: &TestApp, who: &Agent, last_event_id: Option<&str>) -> Self {
        let mut req = app
            .client
            .get(format!("{}/v1/stream?heartbeat_secs=1", app.base))
            .bearer_auth(&who.token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..i + 2).collect();
                let mut f = Frame::default();
                for line in raw.lines() {
                    if line.starts_with(':') {
                        f.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        f.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        f.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        f.data.push_str(v);
                    }
                }
                return f;
            }
            let chunk = self.resp.chunk().await.unwrap().expect("stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The first frame matching `pred` within 15 s; the frames before it.
    async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> (Frame, Vec<Frame>) {
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let f = self.next().await;
                if pred(&f) {
                    return f;
                }
                skipped.push(f);
            }
        })
        .await;
        match found {
            Ok(f) => (f, skipped),
            Err(_) => panic!("no matching frame; saw {skipped:?}"),
        }
    }
}

fn data(f: &Frame) -> serde_json::Value {
    serde_json::from_str(&f.data).unwrap()
}

#[tokio::test]
async fn agent_b_sees_agent_a_s_presence_and_new_note_over_sse() {
    for backend in BACKENDS {
        let env = TestEnv::new(backend).await;
        let app = env.spawn_app().await;
        let d = env
            .deliver(env.inbox, &mail("m1@example.org", "Help", "", "Broken."))
            .await;
        env.wait_for_conversation(d.conversation_id, 1).await;
        let id = d.conversation_id;
        let carol = env.agent("carol@acme.test", InboxRole::Reply).await;

        let mut b = Sse::open(&app, &env.bob, None).await;
        let mut outsider = Sse::open(&app, &carol, None).await;
        // The streams are open once the first bytes came (`retry:`).
        b.next().await;
        outsider.next().await;

        let r = app
            .post(
                &format!("/v1/conversations/{id}/presence"),
                &env.alice,
                json!({"state": "replying"}),
            )
            .await;
        assert_eq!(r.status, 204, "{backend:?}: {r:?}");
        let (p, _) = b.until(|f| f.event.as_deref() == Some("presence")).await;
        let p = data(&p);
        assert_eq!(p["conversation_id"], json!(id), "{backend:?}");
        assert_eq!(p["user_id"], json!(env.alice.id));
        assert_eq!(p["state"], "replying");

        let note = app
            .post(
                &format!("/v1/conversations/{id}/notes"),
                &env.alice,
                json!({"body": "On it"}),
            )
            .await;
        assert_eq!(note.status, 201);
        let (n, _) = b
            .until(|f| {
                f.event.as_deref() == Some("conversation")
                    && data(f)["change"] == "conversation.note_added"
            })
            .await;
        assert_eq!(data(&n)["conversation_id"], json!(id), "{backend:?}");
        assert_eq!(data(&n)["version"], json!(3), "opened, mail, note");
        let note_pos = n.id.clone().expect("an id");

        // Heartbeats come when nothing else does.
        let (h, _) = b.until(|f| f.comment).await;
        assert!(h.comment);

        // Carol joined the inbox later: not a participant, so she saw neither.
        let (_, before) = outsider.until(|f| f.comment).await;
        let (_, more) = outsider.until(|f| f.comment).await;
        for f in before.iter().chain(&more) {
            assert!(f.comment || f.event.is_none(), "{backend:?}: {f:?}");
        }

        // A status change after the note; resuming after the note gets just that.
        let s = app
            .call(
                "PUT",
                &format!("/v1/conversations/{id}/status"),
                &env.alice,
                Some(json!({"status": "pending"})),
                &[],
            )
            .await;
        assert_eq!(s.status, 200, "{s:?}");
        drop(b);
        let mut again = Sse::open(&app, &env.bob, Some(&note_pos)).await;
        let (c, skipped) = again
            .until(|f| f.event.as_deref() == Some("conversation"))
            .await;
        assert_eq!(
            data(&c)["change"],
            "conversation.status_changed",
            "{backend:?}"
        );
        assert!(skipped.iter().all(|f| f.event.is_none()));

        // A presence for a conversation that doesn't exist is a 404.
        let r = app
            .post(
                &format!("/v1/conversations/{}/presence", Uuid::now_v7()),
                &env.alice,
                json!({"state": "viewing"}),
            )
            .await;
        assert_eq!(r.status, 404);
        let bad = app
            .call(
                "GET",
                "/v1/stream",
                &env.bob,
                None,
                &[("Last-Event-ID", "nonsense")],
            )
            .await;
        assert_eq!(bad.status, 400);
    }
}
