//! The site file: parse, expand id ranges, validate purely, then hand out a [`Site`].

mod model;

pub use model::*;
