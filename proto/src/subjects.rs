//! NATS subjects. Every subject starts with a prefix (default `postvak`; tests use a unique one)
//! and the cell name, so that two cells or two test runs never see each other's traffic.

/// Subject an event is relayed on: `{prefix}.{cell}.evt.{tenant}.{stream_type}.{event_type}`.
pub fn event_subject(
    prefix: &str,
    cell: &str,
    tenant: &uuid::Uuid,
    stream_type: &str,
    event_type: &str,
) -> String {
    format!(
        "{prefix}.{cell}.evt.{}.{}.{}",
        tenant.simple(),
        token(stream_type),
        token(event_type)
    )
}

/// Wildcard for every event of a cell.
pub fn all_events(prefix: &str, cell: &str) -> String {
    format!("{prefix}.{cell}.evt.>")
}

/// Wildcard for every event of one stream type in a cell.
pub fn stream_type_events(prefix: &str, cell: &str, stream_type: &str) -> String {
    format!("{prefix}.{cell}.evt.*.{}.*", token(stream_type))
}

/// Subject of a command served by a service: `{prefix}.{cell}.cmd.{service}.{name}`.
pub fn command_subject(prefix: &str, cell: &str, service: &str, name: &str) -> String {
    format!("{prefix}.{cell}.cmd.{}.{}", token(service), token(name))
}

/// Subject of an ephemeral signal (core NATS, never stored):
/// `{prefix}.{cell}.sig.{topic}.{tenant}`.
pub fn signal_subject(prefix: &str, cell: &str, topic: &str, tenant: &uuid::Uuid) -> String {
    format!("{prefix}.{cell}.sig.{}.{}", token(topic), tenant.simple())
}

/// The tenant of a signal subject made by [`signal_subject`] for this prefix, cell and topic.
pub fn signal_tenant(subject: &str, prefix: &str, cell: &str, topic: &str) -> Option<uuid::Uuid> {
    let rest = subject.strip_prefix(&format!("{prefix}.{cell}.sig.{}.", token(topic)))?;
    uuid::Uuid::try_parse(rest).ok()
}

/// Name of the JetStream stream that holds a cell's events.
pub fn jetstream_name(prefix: &str, cell: &str) -> String {
    format!("{}_{}_EVENTS", token(prefix), token(cell)).to_uppercase()
}

/// NATS subject tokens may not contain `.`, `*`, `>` or whitespace.
fn token(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_tokenised() {
        let t = uuid::Uuid::nil();
        assert_eq!(
            event_subject("pv", "eu1", &t, "inbox", "inbox.created"),
            "pv.eu1.evt.00000000000000000000000000000000.inbox.inbox_created"
        );
        assert_eq!(jetstream_name("pv-x", "eu1"), "PV-X_EU1_EVENTS");
    }

    #[test]
    fn signal_subjects_carry_the_tenant() {
        let t = uuid::Uuid::now_v7();
        let s = signal_subject("pv", "eu1", "presence", &t);
        assert_eq!(s, format!("pv.eu1.sig.presence.{}", t.simple()));
        assert_eq!(signal_tenant(&s, "pv", "eu1", "presence"), Some(t));
        assert_eq!(signal_tenant(&s, "pv", "eu2", "presence"), None);
        assert_eq!(signal_tenant(&s, "pv", "eu1", "typing"), None);
        assert_eq!(
            signal_tenant("pv.eu1.sig.presence.x", "pv", "eu1", "presence"),
            None
        );
        // Signals are not events: the cell's JetStream stream never stores them.
        assert!(!s.starts_with(all_events("pv", "eu1").trim_end_matches('>')));
    }
}
