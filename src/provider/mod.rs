//! Providers: the systems that issue credentials. For now, the catalog of provider
//! types (`providers/*.yaml`, embedded); the Provider trait comes with the engine.

pub mod catalog;
