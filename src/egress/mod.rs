//! Step 4 of the request path: the way out, to the web EMR in the private segment only
//! ([`forward`]).

pub(crate) mod forward;
