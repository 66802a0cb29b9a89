//! The process's open-file limit, raised at start to what `max_connections` may need.
//!
//! Every client connection is a file descriptor, and so is every socket lingering after its
//! connection ended ([`linger`](super::linger), at most `max_connections` more), every upstream
//! and outgoing connection, and the files the stores and the compile cache open. Linux starts
//! processes with a soft limit of 1,024 open files unless told otherwise, far below the default
//! `max_connections` of 10,000: past it `accept` fails (EMFILE), the gateway logs "accept
//! failed", and new clients wait in the backlog however idle the open connections are. So the
//! gateway raises its soft limit to the hard limit, which is what the operator allows (as Go's
//! runtime and nginx's `worker_rlimit_nofile` do), and warns when even that is below what
//! `max_connections` may need.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors for everything but client sockets: upstream and outgoing connections, stores,
/// the compile cache, the listeners and the admin port.
const BESIDES_CLIENTS: u64 = 1024;

/// What `max_connections` may need: each connection, as many lingering sockets, and the rest.
pub fn needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(BESIDES_CLIENTS)
}

/// The open-file limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLimit {
    /// No limit, or one at least what `max_connections` may need.
    Enough { limit: Option<u64> },
    /// Below what `max_connections` may need, even raised to the hard limit.
    Short { limit: u64, needed: u64 },
}

/// Raises the soft open-file limit to the hard one (a raise within the hard limit needs no
/// privilege), and says whether it is enough for `max_connections`.
pub fn raise(max_connections: usize) -> FileLimit {
    let needed = needed(max_connections);
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let limit = if current != maximum
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )
        .is_ok()
    {
        maximum
    } else {
        current
    };
    match limit {
        Some(limit) if limit < needed => FileLimit::Short { limit, needed },
        limit => FileLimit::Enough { limit },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_their_lingering_sockets_count_twice() {
        assert_eq!(needed(10_000), 21_024);
        assert_eq!(needed(usize::MAX), u64::MAX);
    }
}
