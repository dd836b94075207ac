//! API keys under concurrent use; inbox pages of a member.

use crate::oidc_harness::{Backend, TestApp};
use std::time::{Duration, Instant};

/// Requests arriving together on a key all pass, and its last use is recorded (once a minute
/// at most, off the requests' path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_by_many_requests_at_once_records_its_last_use() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend).await;
        let (tenant, _) = app.tenant("Keys").await;
        let ctx = app.ctx(tenant).await;
        let issued = app
            .dir
            .issue_api_key(&ctx, "busy", &["read".to_owned()], None, None)
            .await
            .unwrap();
        let last_use = |app: &TestApp| {
            let ctx = ctx.clone();
            let dir = app.dir.clone();
            async move {
                dir.list_api_keys(&ctx)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|k| k.id == issued.key_id)
                    .expect("the issued key is listed")
                    .last_used_at
            }
        };
        assert_eq!(last_use(&app).await, None, "{backend:?}: never used yet");

        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (dir, token) = (app.dir.clone(), issued.token.clone());
            requests
                .spawn(async move { dir.authenticate_api_key(&token).await.map(|c| c.tenant()) });
        }
        while let Some(r) = requests.join_next().await {
            assert_eq!(
                r.unwrap().ok(),
                Some(tenant),
                "{backend:?}: every request passes"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if last_use(&app).await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{backend:?}: the key's last use was never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A page of a member's readable inboxes is filled from all of them: with readable inboxes
/// first and last of five, a page of two holds both (it used to hold only the first, as if the
/// list ended there).
#[tokio::test]
async fn a_page_of_readable_inboxes_is_filled_from_all_of_them() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend).await;
        let (tenant, _) = app.tenant("Pages").await;
        let ctx = app.ctx(tenant).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let inbox = app
                .dir
                .create_inbox(&ctx, &format!("Inbox {i}"), &[format!("in{i}@pages.test")])
                .await
                .unwrap();
            ids.push(inbox.id);
        }
        let readable = vec![ids[0], ids[4]];
        let list = |after: Option<uuid::Uuid>, limit: u32| {
            let (dir, ctx, readable) = (app.dir.clone(), ctx.clone(), readable.clone());
            async move {
                dir.list_inboxes(&ctx, Some(readable), after, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.id, i.addresses))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(None, 2).await,
            vec![
                (ids[0], vec!["in0@pages.test".to_owned()]),
                (ids[4], vec!["in4@pages.test".to_owned()])
            ],
            "{backend:?}"
        );
        assert_eq!(
            list(Some(ids[0]), 1).await,
            vec![(ids[4], vec!["in4@pages.test".to_owned()])],
            "{backend:?}"
        );
        assert!(list(Some(ids[4]), 2).await.is_empty(), "{backend:?}");
        // No readable inbox: an empty page, not every inbox.
        let none = app
            .dir
            .list_inboxes(&ctx, Some(Vec::new()), None, 10)
            .await
            .unwrap();
        assert!(none.is_empty(), "{backend:?}");
    }
}
