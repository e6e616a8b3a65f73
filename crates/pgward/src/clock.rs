//! Wall-clock time in the one format pgward records: RFC 3339, UTC,
//! millisecond precision.

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub fn rfc3339(ts: jiff::Timestamp) -> String {
    ts.round(jiff::Unit::Millisecond).unwrap_or(ts).to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(now())
}
