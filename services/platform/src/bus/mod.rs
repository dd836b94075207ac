//! The bus: NATS JetStream in distributed mode, in-process in the embedded default. Both carry
//! (1) committed events, relayed from the event store, to durable consumers, and (2) commands
//! between services as request/reply with an idempotency key.
//!
//! Events on the bus are exactly what the store holds: ciphertext, never plaintext.
//!
//! (3) Ephemeral signals (presence): plain publish/subscribe, at most once, never stored. On
//! NATS a core subject `{prefix}.{cell}.sig.{topic}.{tenant}`, in-process a broadcast channel.
//! Every subscription gets each signal once (the publisher's own subscriptions included), so
//! a process that delivers only what its subscriptions receive shows each signal exactly once.

pub mod inproc;
pub mod nats;

use crate::store::{LogPosition, StoredEvent};
use async_trait::async_trait;
use postvak_proto::command::{CommandEnvelope, CommandReply};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("no reply to {subject} within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("no service answers {subject}")]
    NoResponders { subject: String },
    #[error("malformed message on {subject}: {reason}")]
    Malformed { subject: String, reason: String },
    #[error("bus error: {0}")]
    Other(String),
}

impl BusError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "bus_unavailable",
            Self::Timeout { .. } => "bus_timeout",
            Self::NoResponders { .. } => "bus_no_responders",
            Self::Malformed { .. } => "bus_malformed_message",
            Self::Other(_) => "bus_error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Nats,
    InProcess,
}

/// JetStream's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    pub sequence: u64,
    /// The message id was seen before: JetStream stored nothing new.
    pub duplicate: bool,
}

/// A durable consumer of a cell's events.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, unique per consumer (service + purpose).
    pub name: String,
    /// Only events of these stream types; empty = every event.
    pub stream_types: Vec<String>,
    /// Where to resume when the bus itself keeps no position (in-process): the consumer's
    /// checkpoint from its own table.
    pub start_after: LogPosition,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
}

/// Acknowledges one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    /// Asks for redelivery after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;
}

/// One event delivered to a consumer (at least once).
pub struct EventDelivery {
    pub event: StoredEvent,
    /// How many times it was delivered before (0 on first delivery).
    pub redeliveries: u64,
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for EventDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDelivery")
            .field("event_id", &self.event.event_id)
            .field("redeliveries", &self.redeliveries)
            .finish()
    }
}

#[async_trait]
pub trait EventConsumer: Send + fmt::Debug {
    /// Up to `max` deliveries, waiting at most `wait` for the first.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<EventDelivery>, BusError>;
}

/// A request waiting for its reply.
pub struct IncomingCommand {
    pub envelope: CommandEnvelope,
    pub responder: Box<dyn Responder>,
}

impl fmt::Debug for IncomingCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingCommand")
            .field("idempotency_key", &self.envelope.idempotency_key)
            .finish()
    }
}

#[async_trait]
pub trait Responder: Send + Sync {
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError>;
}

#[async_trait]
pub trait CommandStream: Send + fmt::Debug {
    /// The next request; `None` when the subscription ended.
    async fn next(&mut self) -> Option<IncomingCommand>;
}

/// An ephemeral signal of one tenant (ADR 0026). The payload is a `postvak_proto` type,
/// encoded by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The tenant the subject carried (checked against the subscription's).
    pub tenant: Uuid,
    pub payload: Vec<u8>,
}

#[async_trait]
pub trait SignalStream: Send + fmt::Debug {
    /// The next signal of the subscription's tenant and topic; `None` when it ended.
    async fn next(&mut self) -> Option<Signal>;
}

/// The bus of one cell.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    fn kind(&self) -> BusKind;

    /// Publishes committed events in the order given and returns once each is acknowledged
    /// (stored by JetStream). The message id is the event id, so a republished event is a
    /// harmless duplicate.
    async fn publish_events(&self, events: &[StoredEvent]) -> Result<Vec<PublishAck>, BusError>;

    /// A durable consumer; created on first use, resumed after.
    async fn event_consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn EventConsumer>, BusError>;

    /// Sends a command to `service` and waits for its reply.
    async fn request(
        &self,
        service: &str,
        command: &str,
        envelope: &CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError>;

    /// Serves a command (several servers of one command share the load).
    async fn serve(&self, service: &str, command: &str)
    -> Result<Box<dyn CommandStream>, BusError>;

    /// Checks the bus answers.
    async fn ping(&self) -> Result<(), BusError>;

    /// Publishes an ephemeral signal to every current subscriber of `topic` for `tenant`, in
    /// every process of the cell (at most once; nobody listening is fine).
    async fn publish_signal(
        &self,
        topic: &str,
        tenant: Uuid,
        payload: Vec<u8>,
    ) -> Result<(), BusError>;

    /// Subscribes to `topic` for one tenant: only that tenant's signals are ever returned.
    async fn subscribe_signals(
        &self,
        topic: &str,
        tenant: Uuid,
    ) -> Result<Box<dyn SignalStream>, BusError>;
}
