//! Real corpora (CPython's test_email data, the mail-parser and hyperkitty sdists' test mails):
//! every message is accepted and stored byte for byte, none panics, and threading matches an
//! independent computation over the same headers (tests/thread_reference.py, Python's own
//! email parser).

use crate::helpers::*;
use postvak_ingest::settings::SmtpSettings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

fn corpora_root() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(tests_dir().join("corpora.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/corpora.sh could not provide the corpora:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn corpus(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        // CPython's directory also holds images for other tests.
        .filter(|p| {
            name != "cpython" || p.file_name().unwrap().to_string_lossy().starts_with("msg_")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "corpus {name} has only {} files",
        files.len()
    );
    files
}

async fn reference_threads(files: &[PathBuf]) -> Vec<u64> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .arg(tests_dir().join("thread_reference.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let list: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "thread_reference.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two labelings describe the same partition.
fn assert_same_partition(files: &[PathBuf], ours: &[Uuid], reference: &[u64]) {
    let mut fwd: HashMap<Uuid, u64> = HashMap::new();
    let mut back: HashMap<u64, Uuid> = HashMap::new();
    for ((f, o), r) in files.iter().zip(ours).zip(reference) {
        let a = *fwd.entry(*o).or_insert(*r);
        let b = *back.entry(*r).or_insert(*o);
        assert!(
            a == *r && b == *o,
            "threading differs from the reference at {}: ours {o} (reference label {a}), reference {r} (ours {b})",
            f.display()
        );
    }
}

async fn corpora_are_stored_and_threaded(backend: Backend) {
    require_tool("python3", "install Python 3");
    let root = corpora_root();
    let env = TestEnv::new(backend).await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let mut total = 0;
    for name in ["cpython", "mail-parser", "hyperkitty"] {
        let files = corpus(&root, name);
        let inbox = env.add_inbox(name, &format!("{name}@acme.test")).await;
        let mut convs = Vec::new();
        for f in &files {
            let raw = std::fs::read(f).unwrap();
            let d = env.deliver(inbox, &raw).await;
            convs.push(d.conversation_id);
            let stored = env
                .messages()
                .await
                .into_iter()
                .find(|m| m.message_id == d.message_id)
                .unwrap_or_else(|| panic!("{} was not stored", f.display()));
            assert_eq!(env.blob(stored.raw.blob_id).await, raw, "{}", f.display());
        }
        let reference = reference_threads(&files).await;
        assert_same_partition(&files, &convs, &reference);
        total += files.len();

        // The same corpus over SMTP into another inbox: every message gets its 250.
        let smtp_inbox = env
            .add_inbox(&format!("{name} smtp"), &format!("{name}-smtp@acme.test"))
            .await;
        let mut c = RawSmtp::connect(smtp.port).await.unwrap();
        for f in &files {
            let raw = std::fs::read(f).unwrap();
            let code = c
                .send(&format!("{name}-smtp@acme.test"), &raw)
                .await
                .unwrap();
            assert_eq!(code, 250, "{} over SMTP", f.display());
        }
        let via_smtp: Vec<Uuid> = env
            .messages()
            .await
            .into_iter()
            .filter(|m| m.inbox_id == smtp_inbox)
            .map(|m| m.conversation_id)
            .collect();
        assert_eq!(via_smtp.len(), files.len(), "{name}: one message per file");
        assert_same_partition(&files, &via_smtp, &reference);
    }
    assert!(total >= 90, "only {total} corpus messages");

    // The real corpora hold few replies: a generated one with deep, partial, out-of-order and
    // dangling reference chains checks the same equivalence where it is hard.
    let dir = postvak_platform::testkit::TempDir::new();
    let files = synthetic_threads(dir.path(), 300);
    let inbox = env.add_inbox("synthetic", "synthetic@acme.test").await;
    let mut convs = Vec::new();
    for f in &files {
        convs.push(
            env.deliver(inbox, &std::fs::read(f).unwrap())
                .await
                .conversation_id,
        );
    }
    let reference = reference_threads(&files).await;
    assert_same_partition(&files, &convs, &reference);
    let distinct: std::collections::HashSet<_> = convs.iter().collect();
    assert!(
        distinct.len() > 10 && distinct.len() < files.len() / 2,
        "{} threads",
        distinct.len()
    );
    smtp.stop().await;
}

#[tokio::test]
async fn corpora_are_stored_and_threaded_sqlite() {
    corpora_are_stored_and_threaded(Backend::Sqlite).await;
}

#[tokio::test]
async fn corpora_are_stored_and_threaded_postgres() {
    corpora_are_stored_and_threaded(Backend::Postgres).await;
}

/// Writes `n` mails forming threads: replies name a random earlier mail through In-Reply-To,
/// References (whole, truncated or with unknown ids) or both; a tenth are delivered before the
/// mail they answer. Deterministic.
fn synthetic_threads(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut seed: u64 = 0x5eed_1234_abcd;
    let mut rnd = move |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    let mut chains: Vec<Vec<String>> = Vec::new();
    let mut mails: Vec<(usize, Vec<u8>)> = Vec::new();
    for i in 0..n {
        let id = format!("syn{i}@gen.example");
        let mut headers = String::new();
        let mut chain = Vec::new();
        if i > 0 && rnd(10) < 7 {
            let parent = rnd(i as u64) as usize;
            let mut refs = chains[parent].clone();
            refs.push(format!("syn{parent}@gen.example"));
            match rnd(5) {
                0 => headers.push_str(&format!("In-Reply-To: <syn{parent}@gen.example>\r\n")),
                1 => {
                    let keep = refs.len().saturating_sub(1 + rnd(3) as usize);
                    let part: Vec<String> = refs[keep..].iter().map(|r| format!("<{r}>")).collect();
                    headers.push_str(&format!("References: {}\r\n", part.join("\r\n ")));
                }
                2 => headers.push_str(&format!("References: <lost{}@elsewhere>\r\n", rnd(1000))),
                _ => {
                    let all: Vec<String> = refs.iter().map(|r| format!("<{r}>")).collect();
                    headers.push_str(&format!(
                        "In-Reply-To: <syn{parent}@gen.example>\r\nReferences: {}\r\n",
                        all.join(" ")
                    ));
                }
            }
            chain = refs;
        }
        chains.push(chain);
        let subject = format!("Topic {}", rnd(5));
        let body = format!(
            "From: c{i}@example.org\r\nTo: synthetic@acme.test\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n{headers}\r\nbody {i}\r\n"
        );
        mails.push((i, body.into_bytes()));
    }
    for i in (1..n).rev() {
        if rnd(10) == 0 {
            mails.swap(i, i - 1);
        }
    }
    mails
        .into_iter()
        .enumerate()
        .map(|(pos, (i, raw))| {
            let p = dir.join(format!("{pos:04}-syn{i}.eml"));
            std::fs::write(&p, raw).unwrap();
            p
        })
        .collect()
}
