//! twinwall's PID 1: the ordered boot phases (early, modules, storage, trust, network,
//! services, health), the service supervisor with reaping and orderly shutdown, and the
//! status it serves on `RUN_DIR/init.sock`.
//!
//! Every system call goes through [`sys::Syscalls`], so each phase is tested with
//! [`sys::RecordingSyscalls`] without being PID 1. The supervisor also runs outside PID 1
//! as a child subreaper (`twinwall init --supervise`), which is how the netns tests run the
//! service set exactly as the appliance does.

pub mod cmdline;
pub mod early;
pub mod health;
pub mod labhost;
pub mod layout;
pub mod logbuf;
pub mod memory;
pub mod modules;
pub mod network;
pub mod phase;
pub mod pid1;
pub mod service;
pub mod services;
pub mod status;
pub mod storage;
pub mod supervisor;
pub mod sys;
pub mod trust;
pub mod verify;
