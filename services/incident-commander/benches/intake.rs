//! Intake benchmark (written below).
fn main() {}
