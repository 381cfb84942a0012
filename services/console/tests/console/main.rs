//! The console against the real services on a real nats-server: pages, live updates,
//! actions and bad input over HTTP, and what a person sees in headless Chromium.

mod browser;
mod pages;
mod stack;
