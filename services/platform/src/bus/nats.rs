//! The bus on NATS: events in one JetStream stream per cell, commands as core NATS
//! request/reply with a queue group per service.
//!
//! Choices worth knowing:
//! - Events are published with `Nats-Msg-Id` = event id, so a relay that republishes after a
//!   crash stores nothing twice (within the stream's duplicate window, [`DUPLICATE_WINDOW`]).
//! - Consumer filters: nats-server 2.9 knows one `filter_subject` per consumer
//!   (`filter_subjects` needs 2.10). A consumer of one stream type filters on the server; a
//!   consumer of several takes every event of the cell and drops the others on the client
//!   (acknowledging them at once). That keeps one durable consumer per spec and the cell's
//!   commit order across stream types, at the cost of reading events it does not need.
//! - A message that does not decode is logged, terminated (`+TERM`: never redelivered) and
//!   skipped, so it cannot block the consumer.

use super::{
    Acker, Bus, BusError, BusKind, CommandStream, ConsumerSpec, EventConsumer, EventDelivery,
    IncomingCommand, PublishAck, Responder,
};
use crate::store::StoredEvent;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use postvak_proto::WireEvent;
use postvak_proto::command::{CommandEnvelope, CommandReply};
use postvak_proto::subjects;
use std::fmt;
use std::time::Duration;

/// How long JetStream remembers message ids to drop republished events.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Header carrying W3C trace context on commands.
const TRACEPARENT: &str = "traceparent";

/// Connection settings.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Bound on the first connection (and on each reconnect attempt).
    pub connect_timeout: Duration,
    /// Bound on JetStream API calls and publish acknowledgements.
    pub jetstream_timeout: Duration,
    /// Connection name shown by the server (`nats server report connections`).
    pub client_name: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            jetstream_timeout: Duration::from_secs(10),
            client_name: "postvak".to_owned(),
        }
    }
}

/// The bus of one cell on NATS JetStream.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    cell: String,
    stream_name: String,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("prefix", &self.prefix)
            .field("cell", &self.cell)
            .field("stream", &self.stream_name)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects with default options and ensures the cell's stream exists.
    pub async fn connect(url: &str, prefix: &str, cell: &str) -> Result<Self, BusError> {
        Self::connect_with(url, prefix, cell, &NatsOptions::default()).await
    }

    /// Connects and ensures the cell's stream exists. An unreachable server is
    /// [`BusError::Unavailable`] within `connect_timeout`, never a hang.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        cell: &str,
        opts: &NatsOptions,
    ) -> Result<Self, BusError> {
        let shown = redact(url);
        let connecting = async_nats::ConnectOptions::new()
            .name(&opts.client_name)
            .connection_timeout(opts.connect_timeout)
            .connect(url);
        // The outer bound also covers DNS and the TLS/INFO handshake.
        let client =
            tokio::time::timeout(opts.connect_timeout + Duration::from_secs(1), connecting)
                .await
                .map_err(|_| {
                    BusError::Unavailable(format!(
                        "cannot connect to NATS at {shown}: no answer within {:?}",
                        opts.connect_timeout
                    ))
                })?
                .map_err(|e| {
                    BusError::Unavailable(format!("cannot connect to NATS at {shown}: {e}"))
                })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.jetstream_timeout)
            .build(client.clone());
        let stream_name = subjects::jetstream_name(prefix, cell);
        let bus = Self {
            client,
            js,
            prefix: prefix.to_owned(),
            cell: cell.to_owned(),
            stream_name,
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    async fn ensure_stream(&self) -> Result<(), BusError> {
        let config = stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![subjects::all_events(&self.prefix, &self.cell)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            ..Default::default()
        };
        self.js.get_or_create_stream(config).await.map_err(|e| {
            BusError::Unavailable(format!(
                "cannot create or open JetStream stream {}: {e}",
                self.stream_name
            ))
        })?;
        Ok(())
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream holding this cell's events.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The underlying client (tests and tooling read the stream raw through it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn command_subject(&self, service: &str, command: &str) -> String {
        subjects::command_subject(&self.prefix, &self.cell, service, command)
    }

    fn filter_for(&self, stream_types: &[String]) -> (String, Option<Vec<String>>) {
        match stream_types {
            [only] => (
                subjects::stream_type_events(&self.prefix, &self.cell, only),
                None,
            ),
            [] => (subjects::all_events(&self.prefix, &self.cell), None),
            many => (
                subjects::all_events(&self.prefix, &self.cell),
                Some(many.to_vec()),
            ),
        }
    }
}

/// The URL with any password hidden.
fn redact(url: &str) -> String {
    crate::db::redact_url(url)
}

/// A durable consumer name may not hold `.`, `*`, `>` or whitespace.
fn durable_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' | '/' | '\\' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> BusKind {
        BusKind::Nats
    }

    #[tracing::instrument(skip_all, fields(cell = %self.cell, events = events.len()))]
    async fn publish_events(&self, events: &[StoredEvent]) -> Result<Vec<PublishAck>, BusError> {
        // Pipelined: send every message, then wait for the acknowledgements in order. Each
        // message after the first names its predecessor as the stream's expected last message:
        // if one is not stored (refused, or lost with its connection), JetStream refuses every
        // later one of the batch too, so the relay's retry of the batch stores them after it
        // and never out of log order. A republished message is a duplicate before that check
        // is made, so a retry of a batch that was partly or wholly stored is accepted.
        let mut pending = Vec::with_capacity(events.len());
        let mut previous: Option<String> = None;
        for event in events {
            let subject = subjects::event_subject(
                &self.prefix,
                &self.cell,
                &event.tenant_id.0,
                &event.stream_type,
                &event.event_type,
            );
            let body = serde_json::to_vec(&event.to_wire()).map_err(|e| {
                BusError::Other(format!("cannot encode event {}: {e}", event.event_id))
            })?;
            let id = event.event_id.to_string();
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(body))
                .message_id(&id);
            if let Some(previous) = &previous {
                publish = publish.expected_last_message_id(previous);
            }
            previous = Some(id);
            let ack = self
                .js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| publish_error(&subject, &e.to_string()))?;
            pending.push((subject, ack));
        }
        let mut acks = Vec::with_capacity(pending.len());
        for (subject, ack) in pending {
            let ack = ack
                .await
                .map_err(|e| publish_error(&subject, &e.to_string()))?;
            acks.push(PublishAck {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            });
        }
        Ok(acks)
    }

    async fn event_consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn EventConsumer>, BusError> {
        let durable = durable_name(&spec.name);
        let (filter_subject, client_filter) = self.filter_for(&spec.stream_types);
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("postvak consumer {}", spec.name)),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            filter_subject,
            // Unbounded: the consumer helper dead-letters itself after its own attempt limit.
            max_deliver: -1,
            ..Default::default()
        };
        // Creates the consumer, or updates the one of the same name (e.g. a new ack_wait).
        let consumer = self
            .js
            .create_consumer_on_stream(config, &self.stream_name)
            .await
            .map_err(|e| {
                BusError::Unavailable(format!(
                    "cannot create consumer {durable} on {}: {e}",
                    self.stream_name
                ))
            })?;
        Ok(Box::new(NatsEventConsumer {
            consumer,
            name: durable,
            client_filter,
        }))
    }

    #[tracing::instrument(skip_all, fields(cell = %self.cell, %service, %command))]
    async fn request(
        &self,
        service: &str,
        command: &str,
        envelope: &CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError> {
        let subject = self.command_subject(service, command);
        let body = serde_json::to_vec(envelope)
            .map_err(|e| BusError::Other(format!("cannot encode command for {subject}: {e}")))?;
        let mut request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .timeout(Some(timeout));
        if let Some(tp) = &envelope.traceparent {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TRACEPARENT, tp.as_str());
            request = request.headers(headers);
        }
        // The client's own timeout bounds the wait for the reply; this one also bounds a
        // publish stuck behind a disconnected client.
        let sent = tokio::time::timeout(
            timeout + Duration::from_millis(250),
            self.client.send_request(subject.clone(), request),
        )
        .await
        .map_err(|_| BusError::Timeout {
            subject: subject.clone(),
            timeout,
        })?;
        let message = sent.map_err(|e| {
            use async_nats::RequestErrorKind as K;
            match e.kind() {
                K::NoResponders => BusError::NoResponders {
                    subject: subject.clone(),
                },
                K::TimedOut => BusError::Timeout {
                    subject: subject.clone(),
                    timeout,
                },
                _ => BusError::Unavailable(format!("request to {subject} failed: {e}")),
            }
        })?;
        serde_json::from_slice(&message.payload).map_err(|e| BusError::Malformed {
            subject,
            reason: format!("reply does not decode: {e}"),
        })
    }

    async fn serve(
        &self,
        service: &str,
        command: &str,
    ) -> Result<Box<dyn CommandStream>, BusError> {
        let subject = self.command_subject(service, command);
        // One queue group per service: replicas share the load, each request reaches one.
        let group = format!("{}.{}.{}", self.prefix, self.cell, durable_name(service));
        let subscriber = self
            .client
            .queue_subscribe(subject.clone(), group)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        // The subscription is registered on the server once this round trip returns, so a
        // request sent after `serve` returns finds it.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        Ok(Box::new(NatsCommandStream {
            subscriber,
            subject,
            client: self.client.clone(),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        // A JetStream API round trip: proves the connection and JetStream both answer. Read
        // raw: this client's typed account info does not parse every server version's answer.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.request("$JS.API.INFO", Bytes::new()),
        )
        .await
        .map_err(|_| BusError::Unavailable("NATS did not answer within 5s".to_owned()))?
        .map_err(|e| BusError::Unavailable(format!("NATS JetStream does not answer: {e}")))?;
        let body: serde_json::Value = serde_json::from_slice(&answer.payload)
            .map_err(|e| BusError::Unavailable(format!("NATS JetStream answered garbage: {e}")))?;
        match body.get("error") {
            Some(err) => Err(BusError::Unavailable(format!("NATS JetStream: {err}"))),
            None => Ok(()),
        }
    }

    async fn publish_signal(
        &self,
        topic: &str,
        tenant: uuid::Uuid,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        let subject = subjects::signal_subject(&self.prefix, &self.cell, topic, &tenant);
        // Core NATS: no acknowledgement, nothing stored; bounded like a request so a
        // disconnected client cannot hold the caller.
        tokio::time::timeout(
            Duration::from_secs(2),
            self.client.publish(subject.clone(), Bytes::from(payload)),
        )
        .await
        .map_err(|_| publish_error(&subject, "no room in the client's buffer within 2s"))?
        .map_err(|e| publish_error(&subject, &e.to_string()))
    }

    async fn subscribe_signals(
        &self,
        topic: &str,
        tenant: uuid::Uuid,
    ) -> Result<Box<dyn super::SignalStream>, BusError> {
        let subject = subjects::signal_subject(&self.prefix, &self.cell, topic, &tenant);
        let subscriber =
            self.client.subscribe(subject.clone()).await.map_err(|e| {
                BusError::Unavailable(format!("cannot subscribe to {subject}: {e}"))
            })?;
        // `flush` only writes to the socket. A request on the same connection comes back
        // after the server handled everything sent before it (one connection's operations
        // are processed in order), so once it answers — "no responders" is the expected
        // answer — the subscription is registered and a signal published by any process
        // from then on arrives.
        let probe = format!("{}.{}.sig._registered", self.prefix, self.cell);
        if tokio::time::timeout(
            Duration::from_secs(2),
            self.client.request(probe, Bytes::new()),
        )
        .await
        .is_err()
        {
            tracing::debug!(%subject, "no round trip within 2s; the subscription may start late");
        }
        Ok(Box::new(NatsSignalStream {
            subscriber,
            subject,
            prefix: self.prefix.clone(),
            cell: self.cell.clone(),
            topic: topic.to_owned(),
            tenant,
        }))
    }
}

/// A core NATS subscription to one tenant's signals of one topic.
struct NatsSignalStream {
    subscriber: async_nats::Subscriber,
    subject: String,
    prefix: String,
    cell: String,
    topic: String,
    tenant: uuid::Uuid,
}

impl fmt::Debug for NatsSignalStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSignalStream")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl super::SignalStream for NatsSignalStream {
    async fn next(&mut self) -> Option<super::Signal> {
        while let Some(m) = self.subscriber.next().await {
            // The subject names the tenant; a message whose subject is not this tenant's is
            // dropped (the server filter already ensures it, this is the second wall).
            match subjects::signal_tenant(&m.subject, &self.prefix, &self.cell, &self.topic) {
                Some(t) if t == self.tenant => {
                    return Some(super::Signal {
                        tenant: t,
                        payload: m.payload.to_vec(),
                    });
                }
                _ => {
                    tracing::warn!(subject = %m.subject, expected = %self.subject, "signal for another subject dropped");
                }
            }
        }
        None
    }
}

fn publish_error(subject: &str, reason: &str) -> BusError {
    BusError::Unavailable(format!("publish to {subject} failed: {reason}"))
}

/// A durable JetStream pull consumer.
struct NatsEventConsumer {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    name: String,
    /// Stream types kept when the server filter is wider than the spec (several types).
    client_filter: Option<Vec<String>>,
}

impl fmt::Debug for NatsEventConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsEventConsumer")
            .field("name", &self.name)
            .field("client_filter", &self.client_filter)
            .finish_non_exhaustive()
    }
}

impl NatsEventConsumer {
    /// Whatever is available now, up to `max`, without waiting.
    async fn fetch_available(&self, max: usize) -> Result<Vec<jetstream::Message>, BusError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        // A no-wait pull ends with a status from the server; the bound guards against a lost one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, batch.next()).await {
            out.push(next.map_err(|e| self.error(e))?);
        }
        Ok(out)
    }

    /// Waits up to `wait` for one message.
    async fn wait_for_one(&self, wait: Duration) -> Result<Option<jetstream::Message>, BusError> {
        // JetStream refuses pull requests that expire in under a millisecond.
        let expires = wait.max(Duration::from_millis(10));
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(expires)
            .messages()
            .await
            .map_err(|e| self.error(e))?;
        match batch.next().await {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(self.error(e)),
            None => Ok(None),
        }
    }

    fn error(&self, e: impl fmt::Display) -> BusError {
        BusError::Unavailable(format!("consumer {} cannot fetch: {e}", self.name))
    }

    /// Decodes one message; `None` (after terminating it) when it is not a `WireEvent`, or
    /// (after acknowledging it) when its stream type is filtered out on the client.
    async fn decode(&self, message: jetstream::Message) -> Option<EventDelivery> {
        let redeliveries = message
            .info()
            .map(|i| i.delivered.saturating_sub(1).max(0) as u64)
            .unwrap_or(0);
        let subject = message.subject.to_string();
        let decoded = serde_json::from_slice::<WireEvent>(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|w| {
                StoredEvent::from_wire(&w).ok_or_else(|| "a field is malformed".to_owned())
            });
        let (message, acker) = message.split();
        drop(message);
        match decoded {
            Err(reason) => {
                tracing::error!(
                    consumer = %self.name, %subject, %reason,
                    "malformed event message terminated and skipped"
                );
                if let Err(e) = acker.ack_with(AckKind::Term).await {
                    tracing::warn!(consumer = %self.name, error = %e, "cannot terminate message");
                }
                None
            }
            Ok(event) => {
                if let Some(keep) = &self.client_filter
                    && !keep.contains(&event.stream_type)
                {
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(consumer = %self.name, error = %e, "cannot ack skipped message");
                    }
                    return None;
                }
                Some(EventDelivery {
                    event,
                    redeliveries,
                    acker: Box::new(NatsAcker { acker, subject }),
                })
            }
        }
    }
}

#[async_trait]
impl EventConsumer for NatsEventConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<EventDelivery>, BusError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Pull whatever is there; only when nothing is, hold a pull request open for one
            // message, then take what else arrived with it. A long pull for `max` messages
            // would hold the first one back until the batch filled or the pull expired.
            let mut messages = self.fetch_available(max).await?;
            if messages.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                match self.wait_for_one(left).await? {
                    Some(first) => {
                        messages.push(first);
                        if max > 1 {
                            messages.extend(self.fetch_available(max - 1).await?);
                        }
                    }
                    None => return Ok(Vec::new()),
                }
            }
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                if let Some(d) = self.decode(m).await {
                    out.push(d);
                }
            }
            // Everything fetched may have been skipped (malformed or filtered out): keep
            // waiting while time is left.
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }
}

struct NatsAcker {
    acker: jetstream::message::Acker,
    subject: String,
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        // Double ack: returns once the server recorded it, so a crash right after cannot
        // bring the event back (the handler is idempotent anyway).
        self.acker
            .double_ack()
            .await
            .map_err(|e| BusError::Unavailable(format!("ack on {} failed: {e}", self.subject)))
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.acker
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::Unavailable(format!("nak on {} failed: {e}", self.subject)))
    }
}

/// Requests on a command subject.
struct NatsCommandStream {
    subscriber: async_nats::Subscriber,
    subject: String,
    client: async_nats::Client,
}

impl fmt::Debug for NatsCommandStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCommandStream")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CommandStream for NatsCommandStream {
    async fn next(&mut self) -> Option<IncomingCommand> {
        loop {
            let message = self.subscriber.next().await?;
            let Some(reply_to) = message.reply.clone() else {
                tracing::warn!(subject = %self.subject, "command without a reply subject dropped");
                continue;
            };
            match serde_json::from_slice::<CommandEnvelope>(&message.payload) {
                Ok(mut envelope) => {
                    if envelope.traceparent.is_none() {
                        envelope.traceparent = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(TRACEPARENT))
                            .map(|v| v.as_str().to_owned());
                    }
                    return Some(IncomingCommand {
                        envelope,
                        responder: Box::new(NatsResponder {
                            client: self.client.clone(),
                            reply_to,
                        }),
                    });
                }
                Err(e) => {
                    // Answer at once so the sender does not wait for its timeout.
                    tracing::warn!(subject = %self.subject, error = %e, "malformed command refused");
                    let reply = CommandReply::Err {
                        problem: postvak_proto::Problem::new(
                            400,
                            "malformed_command",
                            "The command does not decode",
                            Some(e.to_string()),
                        ),
                    };
                    if let Ok(body) = serde_json::to_vec(&reply) {
                        let _ = self.client.publish(reply_to, Bytes::from(body)).await;
                    }
                }
            }
        }
    }
}

struct NatsResponder {
    client: async_nats::Client,
    reply_to: async_nats::Subject,
}

#[async_trait]
impl Responder for NatsResponder {
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError> {
        let body = serde_json::to_vec(&reply)
            .map_err(|e| BusError::Other(format!("cannot encode reply: {e}")))?;
        self.client
            .publish(self.reply_to.clone(), Bytes::from(body))
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot send reply: {e}")))?;
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot send reply: {e}")))
    }
}
