//! One worker's pipeline: change stream -> decode -> route by aggregate -> guarded apply in
//! lanes -> acknowledge -> checkpoint.

pub mod apply;
pub mod lanes;
pub mod start;
pub mod watermark;
pub mod worker;
