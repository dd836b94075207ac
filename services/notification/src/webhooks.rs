//! Tenant webhooks (placeholder while outbound mail lands).
use crate::settings::WebhookSettings;
use postvak_platform::cell::{Cell, Cells};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn start(
    _cells: &Cells,
    _cell: Arc<Cell>,
    _settings: WebhookSettings,
    _cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    Vec::new()
}
