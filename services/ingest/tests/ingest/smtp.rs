//! The SMTP listener against real clients: Python's smtplib and swaks.

use crate::helpers::*;
use postvak_ingest::settings::SmtpSettings;
use tokio::process::Command;

async fn accepted_mail_is_stored_and_queryable(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let dir = postvak_platform::testkit::TempDir::new();
    let raw = mail(
        "first@example.org",
        "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from smtplib",
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit",
        "Hallo,\n.a line starting with a dot\nGrüße\n",
    );
    let file = dir.path().join("m.eml");
    std::fs::write(&file, &raw).unwrap();
    let report = smtplib_send(smtp.port, &["Support@Acme.Test"], &[&file], false).await;
    let ehlo: Vec<String> = serde_json::from_value(report["ehlo"].clone()).unwrap();
    for ext in ["size", "8bitmime", "pipelining", "enhancedstatuscodes"] {
        assert!(ehlo.contains(&ext.to_owned()), "EHLO lacks {ext}: {ehlo:?}");
    }
    assert!(
        !ehlo.contains(&"starttls".to_owned()),
        "no certificate, no STARTTLS"
    );
    assert_eq!(report["results"][0]["code"], 250, "{report}");

    // After the 250 the event is committed and the blob opens to the exact bytes sent.
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.inbox_id, env.inbox);
    assert_eq!(m.source, "smtp");
    assert!(m.new_thread);
    assert_eq!(m.headers.subject.as_deref(), Some("Grüße from smtplib"));
    assert_eq!(m.message_id_header.as_deref(), Some("first@example.org"));
    assert_eq!(m.envelope.mail_from.as_deref(), Some("alice@example.org"));
    assert_eq!(m.envelope.rcpt_to.as_deref(), Some("support@acme.test"));
    assert_eq!(env.blob(m.raw.blob_id).await, raw);
    let text = env.blob(m.text_body.as_ref().unwrap().blob_id).await;
    assert!(
        String::from_utf8(text)
            .unwrap()
            .contains(".a line starting with a dot\r\nGrüße")
    );
    smtp.stop().await;
}

#[tokio::test]
async fn accepted_mail_is_stored_and_queryable_sqlite() {
    accepted_mail_is_stored_and_queryable(Backend::Sqlite).await;
}

#[tokio::test]
async fn accepted_mail_is_stored_and_queryable_postgres() {
    accepted_mail_is_stored_and_queryable(Backend::Postgres).await;
}

#[tokio::test]
async fn unknown_recipients_are_refused_550_and_nothing_is_relayed() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let dir = postvak_platform::testkit::TempDir::new();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, mail("r@example.org", "relay?", "", "x")).unwrap();

    let report = smtplib_send(smtp.port, &["someone@elsewhere.example"], &[&file], false).await;
    assert_eq!(
        report["results"][0]["refused"]["someone@elsewhere.example"], 550,
        "{report}"
    );
    let report = smtplib_send(smtp.port, &["nobody@acme.test"], &[&file], false).await;
    assert_eq!(
        report["results"][0]["refused"]["nobody@acme.test"], 550,
        "{report}"
    );
    assert!(env.messages().await.is_empty());

    // One good recipient among bad ones: delivered to it only, the others refused.
    let report = smtplib_send(
        smtp.port,
        &["nobody@acme.test", "help@acme.test"],
        &[&file],
        false,
    )
    .await;
    let r = &report["results"][0];
    assert_eq!(r["code"], 250, "{report}");
    assert_eq!(r["refused"]["nobody@acme.test"], 550);
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].envelope.rcpt_to.as_deref(), Some("help@acme.test"));
    smtp.stop().await;
}

#[tokio::test]
async fn too_large_is_refused_552_with_and_without_a_size_declaration() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let smtp = env
        .spawn_smtp(SmtpSettings {
            max_message_size: 10_000,
            ..SmtpSettings::default()
        })
        .await;
    let dir = postvak_platform::testkit::TempDir::new();
    let file = dir.path().join("big.eml");
    std::fs::write(
        &file,
        mail("big@example.org", "big", "", &"x".repeat(20_000)),
    )
    .unwrap();
    // smtplib declares SIZE= because we advertise it: refused at MAIL FROM.
    let report = smtplib_send(smtp.port, &["support@acme.test"], &[&file], false).await;
    assert_eq!(report["results"][0]["code"], 552, "{report}");

    // A raw client that declares nothing: refused after DATA, and the session goes on.
    let mut c = RawSmtp::connect(smtp.port).await.unwrap();
    let big = mail("big2@example.org", "big", "", &"y".repeat(20_000));
    assert_eq!(c.send("support@acme.test", &big).await.unwrap(), 552);
    let small = mail("small@example.org", "small", "", "fits");
    assert_eq!(c.send("support@acme.test", &small).await.unwrap(), 250);
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].message_id_header.as_deref(),
        Some("small@example.org")
    );
    smtp.stop().await;
}

#[tokio::test]
async fn starttls_with_smtplib_and_swaks() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_certdir, cert, key) = self_signed_cert();
    let smtp = env
        .spawn_smtp(SmtpSettings {
            tls_cert_path: Some(cert),
            tls_key_path: Some(key),
            ..SmtpSettings::default()
        })
        .await;
    let dir = postvak_platform::testkit::TempDir::new();
    let file = dir.path().join("m.eml");
    let raw = mail("tls@example.org", "over TLS", "", "secret");
    std::fs::write(&file, &raw).unwrap();
    let report = smtplib_send(smtp.port, &["support@acme.test"], &[&file], true).await;
    assert_eq!(report["tls"], true);
    assert_eq!(report["results"][0]["code"], 250, "{report}");

    require_tool("swaks", "apt-get update && apt-get install -y swaks");
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", smtp.port)])
        .args(["--to", "help@acme.test", "--from", "bob@example.org"])
        .args(["--tls", "--header", "Message-ID: <swaks-tls@example.org>"])
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks --tls failed:\n{transcript}");
    assert!(
        transcript.contains("<~  250 2.0.0 Stored as"),
        "{transcript}"
    );

    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.envelope.tls));
    assert_eq!(env.blob(msgs[0].raw.blob_id).await, raw);
    smtp.stop().await;
}

#[tokio::test]
async fn pipelining_with_swaks_and_a_whole_session_in_one_write() {
    require_tool("swaks", "apt-get update && apt-get install -y swaks");
    let env = TestEnv::new(Backend::Sqlite).await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", smtp.port)])
        .args([
            "--to",
            "support@acme.test,nobody@acme.test",
            "--from",
            "bob@example.org",
        ])
        .args([
            "--pipeline",
            "--header",
            "Message-ID: <swaks-pipe@example.org>",
        ])
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(transcript.contains("<** 550 5.1.1"), "{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Stored as"),
        "{transcript}"
    );

    // A client that writes every command of two transactions at once (after the 354s it
    // must wait for): the replies come back in order.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", smtp.port))
        .await
        .unwrap();
    let mut t = String::new();
    read_until(&mut s, &mut t, "220 ", 1).await;
    s.write_all(b"EHLO pipe.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@acme.test>\r\nRCPT TO:<support@acme.test>\r\nDATA\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut t, "354 ", 1).await;
    s.write_all(b"Message-ID: <pipe1@example.org>\r\nSubject: one\r\n\r\n..dot\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<help@acme.test>\r\nDATA\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut t, "354 ", 2).await;
    s.write_all(b"Message-ID: <pipe2@example.org>\r\nSubject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut t, "221 ", 1).await;
    let transcript = t;
    let codes: Vec<&str> = transcript
        .lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        [
            "220", "250", "250", "550", "250", "354", "250", "250", "250", "354", "250", "221"
        ],
        "{transcript}"
    );
    let msgs = env.messages().await;
    let subjects: Vec<_> = msgs
        .iter()
        .filter_map(|m| m.headers.subject.clone())
        .collect();
    assert!(subjects.contains(&"one".to_owned()) && subjects.contains(&"two".to_owned()));
    let one = msgs
        .iter()
        .find(|m| m.headers.subject.as_deref() == Some("one"))
        .unwrap();
    assert!(
        env.blob(one.raw.blob_id).await.ends_with(b"\r\n.dot\r\n"),
        "dot-unstuffed"
    );
    smtp.stop().await;
}

#[tokio::test]
async fn per_peer_connection_and_rate_limits() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let smtp = env
        .spawn_smtp(SmtpSettings {
            max_connections_per_peer: 2,
            max_messages_per_minute_per_peer: 3,
            ..SmtpSettings::default()
        })
        .await;
    let mut a = RawSmtp::connect(smtp.port).await.unwrap();
    let _b = RawSmtp::connect(smtp.port).await.unwrap();
    // A third connection from the same address is refused with 421.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", smtp.port))
        .await
        .unwrap();
    let mut line = String::new();
    use tokio::io::AsyncReadExt;
    s.read_to_string(&mut line).await.unwrap();
    assert!(line.starts_with("421 "), "{line}");

    for i in 0..3 {
        let m = mail(&format!("rate{i}@example.org"), "r", "", "x");
        assert_eq!(a.send("support@acme.test", &m).await.unwrap(), 250);
    }
    let m = mail("rate3@example.org", "r", "", "x");
    assert_eq!(a.send("support@acme.test", &m).await.unwrap(), 451);
    assert_eq!(env.messages().await.len(), 3);
    smtp.stop().await;
}

/// Reads until `needle` occurs `count` times in the transcript (10 s at most).
async fn read_until(s: &mut tokio::net::TcpStream, t: &mut String, needle: &str, count: usize) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let fut = async {
        while t.matches(needle).count() < count {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed; got {t}");
            t.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} x{count} in {t}"));
}
