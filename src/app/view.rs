//! The staff view's start: its context from the configuration, and its connection limit
//! fitted to the file descriptors the devices leave.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::alarm::Alarms;
use crate::config::Config;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::rules::ClearanceTable;

/// Starts the staff view. It is not on the decision path: if it cannot listen, the line
/// runs on and an alarm says why.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_view(
    view: &crate::view::ViewConfig,
    config: &Config,
    journal: &Journal,
    metrics: &Arc<Metrics>,
    rules: &crate::policy::SharedRules,
    accepted: tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
    alarms: &Alarms,
    feed: broadcast::Receiver<bondline_devices::contract::Record>,
    table: &Arc<ClearanceTable>,
    starting: Option<crate::view::starting::Starting>,
) -> Option<std::net::SocketAddr> {
    let ctx = crate::view::ViewCtx {
        table: table.clone(),
        unsigned_allowed: config.trust.allow_unsigned,
        evidence_dir: config.evidence.dir.clone(),
        gateway: config.gateway_id.clone(),
        journal: journal.clone(),
        metrics: metrics.clone(),
        rules: rules.clone(),
        lines: config
            .lines
            .iter()
            .map(|l| crate::view::LineInfo {
                id: l.id.clone(),
                scanner: l.scanner.name.clone(),
                plc: l.plc.name.clone(),
                xray: l.xray.as_ref().map(|(x, _)| x.name.clone()),
                cameras: config
                    .cameras
                    .iter()
                    .filter(|c| c.line == l.id)
                    .map(|c| c.name.clone())
                    .collect(),
                lanes: bondline_devices::contract::LaneRole::ALL
                    .iter()
                    .map(|r| (l.lanes.lane(*r), *r))
                    .collect(),
            })
            .collect(),
        accepted,
        shutdown: shutdown.clone(),
    };
    let fitted = fitted(view, config);
    if fitted.budget.max_connections < view.budget.max_connections {
        warn!(
            configured = view.budget.max_connections,
            limit = fitted.budget.max_connections,
            open_files = crate::fds::soft_limit(),
            "staff view connection limit lowered to keep file descriptors for the devices; raise LimitNOFILE"
        );
    }
    let view = fitted;
    let bound = match starting {
        Some(s) => Some(s.hand_over().await),
        None => None,
    };
    match crate::view::start(&view, ctx, feed, bound).await {
        Ok(addr) => Some(addr),
        Err(e) => {
            alarms.raise(format!("staff view not started: {e}"));
            None
        }
    }
}

/// The view's settings with its connection limit fitted to the file descriptors the devices
/// leave (see crate::fds): HTTP clients get only those.
pub(super) fn fitted(view: &crate::view::ViewConfig, config: &Config) -> crate::view::ViewConfig {
    let mut view = view.clone();
    view.budget.max_connections = crate::fds::view_connections(
        view.budget.max_connections,
        crate::fds::soft_limit(),
        config.lines.len() + config.cameras.len(),
        config
            .evidence
            .upload
            .as_ref()
            .map_or(0, |u| u.max_connections),
    )
    .min(view.budget.max_connections);
    view
}
