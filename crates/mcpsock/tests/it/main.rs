//! Integration tests of the `mcpsock` binary with real processes, real
//! sockets and a real upstream MCP server (the workspace's demo server).
//! Each test has its own directory, config and socket.

mod admin;
mod backlog;
mod isolation;
mod library;
mod lifecycle;
mod lists;
mod passthrough;
mod persist;
mod reload;
mod remote;
mod security;
mod serve;
mod socket;
mod support;
mod tools;
mod upstream;
