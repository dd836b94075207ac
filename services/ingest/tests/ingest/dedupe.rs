//! None lost, none doubled; threading per inbox and tenant — on both backends.

use crate::helpers::*;
use postvak_ingest::settings::SmtpSettings;

async fn same_mail_twice_is_stored_once(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let raw = mail("dup@example.org", "twice", "", "same body");
    let mut c = RawSmtp::connect(smtp.port).await.unwrap();
    assert_eq!(c.send("support@acme.test", &raw).await.unwrap(), 250);
    // The sender retries (it never saw our 250), and a second route adds trace headers.
    assert_eq!(c.send("support@acme.test", &raw).await.unwrap(), 250);
    let mut routed =
        b"Received: from relay2.example by mx (x); Mon, 2 Mar 2026 10:00:05 +0100\r\n".to_vec();
    routed.extend_from_slice(&raw);
    assert_eq!(c.send("help@acme.test", &routed).await.unwrap(), 250);
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(env.blob(msgs[0].raw.blob_id).await, raw);

    // Same Message-ID, different content (Message-IDs are reused): two messages, one thread.
    let other = mail("dup@example.org", "twice", "", "another body");
    assert_eq!(c.send("support@acme.test", &other).await.unwrap(), 250);
    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].conversation_id, msgs[1].conversation_id);
    assert!(!msgs[1].new_thread);
    smtp.stop().await;
}

#[tokio::test]
async fn same_mail_twice_is_stored_once_sqlite() {
    same_mail_twice_is_stored_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn same_mail_twice_is_stored_once_postgres() {
    same_mail_twice_is_stored_once(Backend::Postgres).await;
}

async fn one_mail_to_two_inboxes_gives_one_conversation_in_each(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let sales = env.add_inbox("Sales", "sales@acme.test").await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let dir = postvak_platform::testkit::TempDir::new();
    let first = dir.path().join("first.eml");
    std::fs::write(&first, mail("both@example.org", "to both", "", "hi both")).unwrap();
    let report = smtplib_send(
        smtp.port,
        &["support@acme.test", "sales@acme.test"],
        &[&first],
        false,
    )
    .await;
    assert_eq!(report["results"][0]["code"], 250, "{report}");
    // A reply that names the first mail reaches both inboxes again.
    let reply = dir.path().join("reply.eml");
    std::fs::write(
        &reply,
        mail(
            "both-reply@example.org",
            "Re: to both",
            "In-Reply-To: <both@example.org>",
            "reply",
        ),
    )
    .unwrap();
    let report = smtplib_send(
        smtp.port,
        &["sales@acme.test", "help@acme.test"],
        &[&reply],
        false,
    )
    .await;
    assert_eq!(report["results"][0]["code"], 250, "{report}");

    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 4);
    let in_inbox = |inbox| {
        msgs.iter()
            .filter(move |m| m.inbox_id == inbox)
            .collect::<Vec<_>>()
    };
    let (support, sales_msgs) = (in_inbox(env.inbox), in_inbox(sales));
    assert_eq!(support.len(), 2);
    assert_eq!(sales_msgs.len(), 2);
    assert_eq!(support[0].conversation_id, support[1].conversation_id);
    assert_eq!(sales_msgs[0].conversation_id, sales_msgs[1].conversation_id);
    assert_ne!(
        support[0].conversation_id, sales_msgs[0].conversation_id,
        "never across inboxes"
    );
    assert!(support[0].new_thread && sales_msgs[0].new_thread);
    assert_eq!(support[1].thread_match, "in_reply_to");
    // Both inboxes share one sealed copy of the raw mail.
    assert_eq!(support[0].raw.blob_id, sales_msgs[0].raw.blob_id);
    smtp.stop().await;
}

#[tokio::test]
async fn one_mail_to_two_inboxes_gives_one_conversation_in_each_sqlite() {
    one_mail_to_two_inboxes_gives_one_conversation_in_each(Backend::Sqlite).await;
}

#[tokio::test]
async fn one_mail_to_two_inboxes_gives_one_conversation_in_each_postgres() {
    one_mail_to_two_inboxes_gives_one_conversation_in_each(Backend::Postgres).await;
}

#[tokio::test]
async fn threading_never_by_subject_never_across_tenants_and_by_reply_token() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (other_ctx, other_inbox) = env.other_tenant("support@other.test").await;
    let smtp = env.spawn_smtp(SmtpSettings::default()).await;
    let mut c = RawSmtp::connect(smtp.port).await.unwrap();

    let root = mail("root@example.org", "Invoice 42", "", "where is it?");
    assert_eq!(c.send("support@acme.test", &root).await.unwrap(), 250);
    let same_subject = mail(
        "unrelated@example.org",
        "Invoice 42",
        "",
        "another question",
    );
    assert_eq!(
        c.send("support@acme.test", &same_subject).await.unwrap(),
        250
    );
    // A reply naming the root, sent to another tenant: no thread there.
    let cross = mail(
        "cross@example.org",
        "Re: Invoice 42",
        "References: <root@example.org>",
        "x",
    );
    assert_eq!(c.send("support@other.test", &cross).await.unwrap(), 250);
    // A reply whose client stripped every header but wrote to our reply-token address.
    let msgs = env.messages().await;
    let root_conv = msgs[0].conversation_id;
    assert_ne!(
        msgs[1].conversation_id, root_conv,
        "same subject alone never threads"
    );
    let key = env.ingestor.index_key(&env.ctx).await.unwrap();
    let token = key.reply_token(env.inbox, root_conv);
    let stripped = mail("stripped@example.org", "no headers", "", "answer");
    assert_eq!(
        c.send(&format!("support+{token}@acme.test"), &stripped)
            .await
            .unwrap(),
        250
    );
    // An In-Reply-To naming one of our outbound Message-IDs, never indexed anywhere.
    let ours = key.outbound_message_id(env.inbox, root_conv, "mx.postvak.test");
    let to_ours = mail(
        "to-ours@example.org",
        "Re: our answer",
        &format!("In-Reply-To: <{ours}>"),
        "ok",
    );
    assert_eq!(c.send("help@acme.test", &to_ours).await.unwrap(), 250);
    // The same token used at another tenant's inbox proves nothing there.
    assert_eq!(
        c.send(
            &format!("support+{token}@other.test"),
            &mail("t2@example.org", "x", "", "y")
        )
        .await
        .unwrap(),
        250
    );
    // Sub-addressing with a tag that is not a token still reaches the inbox.
    assert_eq!(
        c.send(
            "support+billing@acme.test",
            &mail("tag@example.org", "x", "", "z")
        )
        .await
        .unwrap(),
        250
    );

    let msgs = env.messages().await;
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[2].conversation_id, root_conv);
    assert_eq!(msgs[2].thread_match, "reply_token");
    assert_eq!(msgs[3].conversation_id, root_conv);
    assert_eq!(msgs[3].thread_match, "own_message_id");
    assert!(msgs[4].new_thread);
    let other = env.messages_of(&other_ctx).await;
    assert_eq!(other.len(), 2);
    assert!(
        other
            .iter()
            .all(|m| m.new_thread && m.inbox_id == other_inbox)
    );
    assert!(other.iter().all(|m| m.conversation_id != root_conv));
    smtp.stop().await;
}

#[tokio::test]
async fn auto_replies_and_bounces_are_flagged() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let auto = mail(
        "ooo@example.org",
        "Out of office",
        "Auto-Submitted: auto-replied\r\nX-Autoreply: yes",
        "away",
    );
    let d = env.deliver(env.inbox, &auto).await;
    assert!(!d.duplicate);
    let bounce = b"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n\
To: support@acme.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\
Message-ID: <bounce1@mx.example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\r\n\
--BB\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
--BB\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--BB--\r\n";
    env.deliver(env.inbox, bounce).await;
    let plain = mail(
        "human@example.org",
        "Question",
        "Authentication-Results: mx.acme.test; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org; dmarc=pass",
        "hello",
    );
    env.deliver(env.inbox, &plain).await;
    let msgs = env.messages().await;
    assert!(msgs[0].flags.auto_reply && !msgs[0].flags.bounce);
    assert!(msgs[1].flags.bounce);
    assert!(!msgs[2].flags.auto_reply && !msgs[2].flags.bounce);
    let methods: Vec<_> = msgs[2]
        .auth_results
        .iter()
        .map(|a| format!("{}={}", a.method, a.result))
        .collect();
    assert_eq!(methods, ["spf=pass", "dkim=pass", "dmarc=pass"]);
}

#[tokio::test]
async fn attachments_and_inline_images_are_sealed_blobs() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let png: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let pdf = b"%PDF-1.4 not really".to_vec();
    let b64 = |d: &[u8]| {
        base64_encode(d)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect::<String>()
    };
    let raw = format!(
        "From: a@example.org\r\nTo: support@acme.test\r\nSubject: =?iso-8859-1?q?R=E9sum=E9?=\r\n\
Message-ID: <att@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"M\"\r\n\r\n\
--M\r\nContent-Type: multipart/related; boundary=\"R\"\r\n\r\n\
--R\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
<p>Caf=E9 <img src=3D\"cid:logo@x\"></p>\r\n\
--R\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
--R--\r\n\
--M\r\nContent-Type: application/pdf; name=\"=?utf-8?q?F=C3=A4ktura.pdf?=\"\r\nContent-Disposition: attachment; filename*=utf-8''F%C3%A4ktura.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
--M--\r\n",
        b64(&png),
        b64(&pdf)
    );
    env.deliver(env.inbox, raw.as_bytes()).await;
    let m = &env.messages().await[0];
    assert_eq!(m.headers.subject.as_deref(), Some("Résumé"));
    let html = String::from_utf8(env.blob(m.html_body.as_ref().unwrap().blob_id).await).unwrap();
    assert!(html.contains("Café"), "{html}");
    assert_eq!(m.attachments.len(), 2, "{:#?}", m.attachments);
    let img = m.attachments.iter().find(|a| a.inline).unwrap();
    assert_eq!(img.blob.content_type, "image/png");
    assert_eq!(img.content_id.as_deref(), Some("logo@x"));
    assert_eq!(img.blob.size, 3000);
    assert_eq!(env.blob(img.blob.blob_id).await, png);
    let doc = m.attachments.iter().find(|a| !a.inline).unwrap();
    assert_eq!(doc.filename.as_deref(), Some("Fäktura.pdf"));
    assert_eq!(env.blob(doc.blob.blob_id).await, pdf);
    assert_eq!(doc.blob.sha256, sha256_hex(&pdf));
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

fn base64_encode(d: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in d.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
