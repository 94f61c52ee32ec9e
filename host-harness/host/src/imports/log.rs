//! `log`: the plugin's records go to the host's log, within the allowance and caps.

use crate::bindings::log;
use crate::instance::HostState;
use crate::sandbox::{LogVerdict, MAX_LOG_FIELDS, MAX_LOG_MESSAGE, cap, printable};

impl log::Host for HostState {
    fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let name = &self.ctx.name;
        let verdict = self.ctx.log_budget.lock().unwrap().take();
        match verdict {
            LogVerdict::Drop => {
                self.ctx.count("log.suppressed");
                return;
            }
            LogVerdict::Write { dropped_before } if dropped_before > 0 => {
                tracing::warn!(integration = %name, suppressed = dropped_before,
                    "plugin log records over the allowance were dropped");
            }
            LogVerdict::Write { .. } => {}
        }
        // Cut, then escaped: a guest's strings never forge a log line.
        let message = printable(&cap(message, MAX_LOG_MESSAGE));
        let fields = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| format!("{}={}", printable(&cap(k, 64)), printable(&cap(v, 512))))
            .collect::<Vec<_>>()
            .join(" ");
        match level {
            log::Level::Debug => tracing::debug!(integration = %name, "{message} {fields}"),
            log::Level::Info => tracing::info!(integration = %name, "{message} {fields}"),
            log::Level::Warn => tracing::warn!(integration = %name, "{message} {fields}"),
            log::Level::Error => tracing::error!(integration = %name, "{message} {fields}"),
        }
    }
}
