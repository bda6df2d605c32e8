//! Error chains in one line, for logs: typed errors keep their causes as `source()`, and a log
//! line shows them all (`cannot reach the EMR: client error (Connect): tcp connect error: ...`).

use std::fmt;

/// Displays an error and every cause after it, separated by `: `.
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

/// The error `e` with its causes, for a log line.
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(e)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        // Bounded: a cyclic chain cannot loop forever.
        for _ in 0..16 {
            let Some(c) = cause else { break };
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e).to_string(), "outer: inner");
    }
}
