pub mod error;
pub mod pipeline;
