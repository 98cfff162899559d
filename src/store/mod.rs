//! Where new values live: a KV version 2 secret store (Vault or OpenBao).
//! (Being written: see issue 3.)
