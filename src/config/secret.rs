//! A value that must never reach a log line, a `{:?}` or a panic message.

use std::fmt;

use serde::Deserialize;

/// A secret text, such as the access token shared with the admin.
///
/// `Debug` and `Display` print only whether it is set, so a config, a client or a state struct
/// that holds one can derive `Debug` safely. The text is reachable only through [`Secret::expose`],
/// which keeps every place that needs it (the header sent to the admin, the comparison of a
/// request's token) easy to find.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text itself, for the two places that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set (an empty or blank token disables the check, as in the reference).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() { "(none)" } else { "(set)" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn never_prints_its_text() {
        let s = Secret::new("hunter2-token");
        assert_eq!(s.to_string(), "(set)");
        assert_eq!(format!("{s:?}"), "Secret((set))");
        assert_eq!(format!("{:#?}", Some(&s)), "Some(\n    Secret((set)),\n)");
        assert_eq!(s.expose(), "hunter2-token");
        assert_eq!(Secret::default().to_string(), "(none)");
        assert!(Secret::new("  ").is_empty());
    }
}
