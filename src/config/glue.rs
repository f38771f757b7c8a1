//! `[glue]`: the GLUE kinds the operator allows (none by default).

use serde::Deserialize;

use super::check::Check;
use super::layers::{EnvVar, Kind};
use crate::job::GlueKind;

pub(super) const ENV: &[EnvVar] = &[EnvVar::new(
    "XXL_EDGE_GLUE_ENABLED",
    "glue.enabled",
    Kind::List,
)];

/// `[glue]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    enabled: Option<Vec<String>>,
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> Vec<GlueKind> {
        let mut enabled = Vec::new();
        for name in self.enabled.unwrap_or_default() {
            match GlueKind::parse(name.trim()) {
                Some(kind) if !enabled.contains(&kind) => enabled.push(kind),
                Some(_) => {}
                None => {
                    let known: Vec<_> = GlueKind::ALL.iter().map(|k| k.config_name()).collect();
                    c.problem(
                        "glue.enabled",
                        format!("unknown GLUE kind \"{name}\"; known: {}", known.join(", ")),
                    );
                }
            }
        }
        let names: Vec<_> = enabled.iter().map(|k| k.config_name()).collect();
        c.show("glue.enabled", format!("{names:?}"));
        enabled
    }
}
