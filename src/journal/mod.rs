//! Durable run state in embedded SQLite. (Being written: see issue 3.)
