//! Why a request target was refused: shared by path normalisation and the route table.

/// Why a request target was refused by the router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The target is malformed or ambiguous: answer 400.
    #[error("bad request target: {0}")]
    BadTarget(&'static str),
    /// No route matches: answer 404 (default deny).
    #[error("no route")]
    NoRoute,
    /// A route matches the path but not the method: answer 405.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl RouteError {
    /// Short machine code: the inner reason for `BadTarget`, else `no-route` / `method-not-allowed`.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::BadTarget(r) => r,
            RouteError::NoRoute => "no-route",
            RouteError::MethodNotAllowed => "method-not-allowed",
        }
    }
}
