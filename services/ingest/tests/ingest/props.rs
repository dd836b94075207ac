//! Fuzz-style: arbitrary bytes and MIME-shaped garbage through the whole pipeline (parse,
//! thread, seal, store, append) never fail and are kept byte for byte.

use crate::helpers::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn mimeish() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        "(Message-ID|In-Reply-To|References): [ -~]{0,60}",
        "Content-Type: (multipart/(mixed|report|alternative); boundary=\"?b\"?|text/plain; charset=(utf-8|bogus|iso-2022-jp|gb2312))",
        "Content-Transfer-Encoding: (base64|quoted-printable|8bit|x-junk)",
        "Subject: =\\?[a-z0-9-]{0,12}\\?[bqBQ]\\?[ -~]{0,30}\\?=",
        "(Auto-Submitted|Precedence|Authentication-Results): [ -~]{0,40}",
        "[A-Za-z-]{1,15}:[ -~]{0,40}",
    ];
    (
        proptest::collection::vec(header, 0..10),
        proptest::collection::vec(any::<u8>(), 0..1500),
        any::<bool>(),
    )
        .prop_map(|(headers, body, multipart)| {
            let mut raw = Vec::new();
            for h in headers {
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            if multipart {
                raw.extend_from_slice(b"--b\r\nContent-Type: text/html\r\n\r\n");
            }
            raw.extend_from_slice(&body);
            if multipart {
                raw.extend_from_slice(b"\r\n--b--\r\n");
            }
            raw
        })
}

#[test]
fn arbitrary_input_is_stored_byte_for_byte() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(TestEnv::new(Backend::Sqlite));
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop_oneof![proptest::collection::vec(any::<u8>(), 0..3000), mimeish()];
    runner
        .run(&strategy, |raw| {
            rt.block_on(async {
                let d = env.deliver(env.inbox, &raw).await;
                let stored = env
                    .messages()
                    .await
                    .into_iter()
                    .find(|m| m.message_id == d.message_id)
                    .expect("stored");
                assert_eq!(env.blob(stored.raw.blob_id).await, raw);
            });
            Ok(())
        })
        .unwrap();
}
