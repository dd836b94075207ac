//! The bus inside one process, for the embedded default (SQLite, no NATS).
//!
//! Events: the cell's event log *is* the stream. A consumer tails the store itself from
//! `spec.start_after` (its own checkpoint, kept in the database by the consumer helper), woken
//! by the store's append signal or a short poll. This bus keeps nothing across restarts, so
//! the consumer's checkpoint is what makes it durable, and [`Bus::publish_events`] has nothing
//! to do: the events are already "published" by being committed. It returns one ack per event
//! (sequence = global position) so that the relay may run unchanged, though it need not.
//!
//! Unacknowledged deliveries come back after `ack_wait`, a nak after its delay, as on
//! JetStream. Commands go over tokio channels, round-robin across the servers of a command.
//! Signals go over one broadcast channel per bus; a subscriber that falls more than
//! [`SIGNAL_BUFFER`] behind loses the oldest (they are ephemeral).

use super::{
    Acker, Bus, BusError, BusKind, CommandStream, ConsumerSpec, EventConsumer, EventDelivery,
    IncomingCommand, PublishAck, Responder, Signal, SignalStream,
};
use crate::store::{EventStore, LogPosition, StoredEvent};
use async_trait::async_trait;
use postvak_proto::command::{CommandEnvelope, CommandReply};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

/// How often a consumer looks at the log when no append signal came (other processes may
/// append to the same database).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// At most this many deliveries wait for an ack before a consumer stops reading new events
/// (JetStream's default `max_ack_pending`).
const MAX_ACK_PENDING: usize = 1_000;

/// Requests queued per server before a sender waits.
const COMMAND_QUEUE: usize = 64;

type CommandKey = (String, String);

/// Signals buffered per subscriber.
pub const SIGNAL_BUFFER: usize = 1024;

/// A signal as broadcast: topic, tenant, payload.
type SignalMsg = (Arc<str>, Uuid, Arc<Vec<u8>>);

#[derive(Default)]
struct Servers {
    senders: Vec<mpsc::Sender<IncomingCommand>>,
    next: usize,
}

/// The bus of one cell inside this process.
#[derive(Clone)]
pub struct InProcessBus {
    store: Arc<dyn EventStore>,
    commands: Arc<Mutex<HashMap<CommandKey, Servers>>>,
    signals: broadcast::Sender<SignalMsg>,
    poll_interval: Duration,
}

impl fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessBus")
            .field("store", &self.store)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InProcessBus {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            commands: Arc::new(Mutex::new(HashMap::new())),
            signals: broadcast::channel(SIGNAL_BUFFER).0,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The next live server of a command, round-robin; `None` when nobody serves it.
    fn pick_server(&self, key: &CommandKey) -> Option<mpsc::Sender<IncomingCommand>> {
        let mut commands = lock(&self.commands);
        let servers = commands.get_mut(key)?;
        servers.senders.retain(|s| !s.is_closed());
        if servers.senders.is_empty() {
            commands.remove(key);
            return None;
        }
        let i = servers.next % servers.senders.len();
        servers.next = servers.next.wrapping_add(1);
        servers.senders.get(i).cloned()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    fn kind(&self) -> BusKind {
        BusKind::InProcess
    }

    async fn publish_events(&self, events: &[StoredEvent]) -> Result<Vec<PublishAck>, BusError> {
        // The log is the stream: committed events are already visible to every consumer.
        Ok(events
            .iter()
            .map(|e| PublishAck {
                sequence: u64::try_from(e.position.global_position).unwrap_or(0),
                duplicate: false,
            })
            .collect())
    }

    async fn event_consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn EventConsumer>, BusError> {
        Ok(Box::new(InProcessConsumer {
            store: self.store.clone(),
            signal: self.store.append_signal(),
            name: spec.name,
            stream_types: spec.stream_types,
            cursor: spec.start_after,
            ack_wait: spec.ack_wait,
            poll_interval: self.poll_interval,
            pending: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    async fn request(
        &self,
        service: &str,
        command: &str,
        envelope: &CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError> {
        let subject = format!("{service}.{command}");
        let key = (service.to_owned(), command.to_owned());
        let no_responders = || BusError::NoResponders {
            subject: subject.clone(),
        };
        let timed_out = || BusError::Timeout {
            subject: subject.clone(),
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let incoming = IncomingCommand {
            envelope: envelope.clone(),
            responder: Box::new(InProcessResponder { tx }),
        };
        let server = self.pick_server(&key).ok_or_else(no_responders)?;
        match tokio::time::timeout_at(deadline, server.send(incoming)).await {
            Err(_) => return Err(timed_out()),
            // The server went away between the pick and the send.
            Ok(Err(_)) => return Err(no_responders()),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(BusError::Other(format!(
                "the server of {subject} dropped the request without replying"
            ))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    async fn serve(
        &self,
        service: &str,
        command: &str,
    ) -> Result<Box<dyn CommandStream>, BusError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        lock(&self.commands)
            .entry((service.to_owned(), command.to_owned()))
            .or_default()
            .senders
            .push(tx);
        Ok(Box::new(InProcessCommandStream {
            rx,
            subject: format!("{service}.{command}"),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish_signal(
        &self,
        topic: &str,
        tenant: Uuid,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        // Nobody subscribed is fine.
        let _ = self
            .signals
            .send((Arc::from(topic), tenant, Arc::new(payload)));
        Ok(())
    }

    async fn subscribe_signals(
        &self,
        topic: &str,
        tenant: Uuid,
    ) -> Result<Box<dyn SignalStream>, BusError> {
        Ok(Box::new(InProcessSignalStream {
            rx: self.signals.subscribe(),
            topic: topic.to_owned(),
            tenant,
        }))
    }
}

struct InProcessSignalStream {
    rx: broadcast::Receiver<SignalMsg>,
    topic: String,
    tenant: Uuid,
}

impl fmt::Debug for InProcessSignalStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessSignalStream")
            .field("topic", &self.topic)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SignalStream for InProcessSignalStream {
    async fn next(&mut self) -> Option<Signal> {
        loop {
            match self.rx.recv().await {
                Ok((topic, tenant, payload)) => {
                    if *topic == *self.topic && tenant == self.tenant {
                        return Some(Signal {
                            tenant,
                            payload: payload.to_vec(),
                        });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(lost = n, topic = %self.topic, "slow signal subscriber lost signals");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

struct InProcessResponder {
    tx: oneshot::Sender<CommandReply>,
}

#[async_trait]
impl Responder for InProcessResponder {
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError> {
        // The requester may have given up (timeout): nothing to do then, as on NATS.
        let _ = self.tx.send(reply);
        Ok(())
    }
}

struct InProcessCommandStream {
    rx: mpsc::Receiver<IncomingCommand>,
    subject: String,
}

impl fmt::Debug for InProcessCommandStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessCommandStream")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CommandStream for InProcessCommandStream {
    async fn next(&mut self) -> Option<IncomingCommand> {
        self.rx.recv().await
    }
}

/// A delivery waiting for its ack.
struct Pending {
    event: StoredEvent,
    /// Deliveries so far.
    deliveries: u64,
    /// When it is delivered again unless acked.
    due: Instant,
}

type PendingMap = Arc<Mutex<HashMap<Uuid, Pending>>>;

/// A consumer tailing the store.
struct InProcessConsumer {
    store: Arc<dyn EventStore>,
    signal: Arc<tokio::sync::Notify>,
    name: String,
    stream_types: Vec<String>,
    /// The last log position read (delivered or filtered out).
    cursor: LogPosition,
    ack_wait: Duration,
    poll_interval: Duration,
    pending: PendingMap,
}

impl fmt::Debug for InProcessConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessConsumer")
            .field("name", &self.name)
            .field("stream_types", &self.stream_types)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl InProcessConsumer {
    fn wants(&self, event: &StoredEvent) -> bool {
        self.stream_types.is_empty() || self.stream_types.contains(&event.stream_type)
    }

    fn delivery(&self, event: StoredEvent, redeliveries: u64) -> EventDelivery {
        let event_id = event.event_id;
        EventDelivery {
            event,
            redeliveries,
            acker: Box::new(InProcessAcker {
                pending: self.pending.clone(),
                event_id,
            }),
        }
    }

    /// Deliveries whose ack is overdue or whose nak delay ran out, oldest first.
    fn due_redeliveries(&self, max: usize, now: Instant) -> Vec<EventDelivery> {
        let mut due: Vec<(StoredEvent, u64)> = {
            let mut pending = lock(&self.pending);
            let mut due: Vec<&mut Pending> =
                pending.values_mut().filter(|p| p.due <= now).collect();
            due.sort_by_key(|p| p.event.position);
            due.into_iter()
                .take(max)
                .map(|p| {
                    let redeliveries = p.deliveries;
                    p.deliveries += 1;
                    p.due = now + self.ack_wait;
                    (p.event.clone(), redeliveries)
                })
                .collect()
        };
        due.sort_by_key(|(e, _)| e.position);
        due.into_iter().map(|(e, r)| self.delivery(e, r)).collect()
    }

    fn next_due(&self) -> Option<Instant> {
        lock(&self.pending).values().map(|p| p.due).min()
    }

    /// Reads new events after the cursor; `(deliveries, read_any)`.
    async fn read_new(
        &mut self,
        max: usize,
        now: Instant,
    ) -> Result<(Vec<EventDelivery>, bool), BusError> {
        let room = MAX_ACK_PENDING
            .saturating_sub(lock(&self.pending).len())
            .min(max);
        if room == 0 {
            return Ok((Vec::new(), false));
        }
        // Read a larger page when filtering, so that skipping other types is quick.
        let page = if self.stream_types.is_empty() {
            room
        } else {
            room.max(256)
        };
        let events = self
            .store
            .read_log(self.cursor, page, None)
            .await
            .map_err(|e| {
                BusError::Unavailable(format!("consumer {} cannot read the log: {e}", self.name))
            })?;
        let read_any = !events.is_empty();
        let mut out = Vec::new();
        for event in events {
            if out.len() >= room {
                break;
            }
            self.cursor = event.position;
            if !self.wants(&event) {
                continue;
            }
            lock(&self.pending).insert(
                event.event_id,
                Pending {
                    event: event.clone(),
                    deliveries: 1,
                    due: now + self.ack_wait,
                },
            );
            out.push(self.delivery(event, 0));
        }
        Ok((out, read_any))
    }
}

#[async_trait]
impl EventConsumer for InProcessConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<EventDelivery>, BusError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let signal = self.signal.clone();
        loop {
            // Registered before reading, so an append that commits meanwhile still wakes us.
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let mut out = self.due_redeliveries(max, now);
            let mut read_any = false;
            if out.len() < max {
                let (new, any) = self.read_new(max - out.len(), now).await?;
                out.extend(new);
                read_any = any;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            if read_any {
                // Only other stream types so far: read on.
                continue;
            }
            let mut wake = deadline.min(now + self.poll_interval);
            if let Some(due) = self.next_due() {
                wake = wake.min(due);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

struct InProcessAcker {
    pending: PendingMap,
    event_id: Uuid,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(&self) -> Result<(), BusError> {
        lock(&self.pending).remove(&self.event_id);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        if let Some(p) = lock(&self.pending).get_mut(&self.event_id) {
            p.due = Instant::now() + delay;
        }
        Ok(())
    }
}
