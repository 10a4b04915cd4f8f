//! `ferrotron plan`: what a configuration needs on a grid before it runs — memory per rank by
//! category (`memory`), communication per group (`parallel::plan`).

pub mod memory;
