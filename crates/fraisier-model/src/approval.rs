//! Approvals (seed 003 `approvalRequired`, seeds 002/004 `requiredApprovals`): whether a run
//! that needs other people's yes may start, as a pure judgement over the votes cast and the
//! time it is given.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

/// One person's decision on a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub user: String,
    pub decision: Decision,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a run asks for: how many yeses, by when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub required: u32,
    pub expires_at: DateTime<Utc>,
}

/// Where a run's approval stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Fewer yeses than required, no no, window open.
    Waiting {
        received: u32,
    },
    Granted,
    Rejected {
        by: String,
        comment: Option<String>,
    },
    /// The window closed before enough people said yes.
    Expired,
}

/// A no from anyone ends it; otherwise enough yeses before the window closed grant it; a vote
/// cast after the window closed does not count.
pub fn judge(req: &Requirement, votes: &[Vote], now: DateTime<Utc>) -> Standing {
    let in_time = || votes.iter().filter(|v| v.at < req.expires_at);
    if let Some(no) = in_time().find(|v| v.decision == Decision::Reject) {
        return Standing::Rejected {
            by: no.user.clone(),
            comment: no.comment.clone(),
        };
    }
    let received = in_time()
        .filter(|v| v.decision == Decision::Approve)
        .count() as u32;
    if received >= req.required {
        Standing::Granted
    } else if now >= req.expires_at {
        Standing::Expired
    } else {
        Standing::Waiting { received }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn vote(user: &str, decision: Decision, at: DateTime<Utc>) -> Vote {
        Vote {
            user: user.into(),
            decision,
            comment: None,
            at,
        }
    }

    #[test]
    fn enough_yeses_in_time_grant_and_one_no_rejects() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let req = Requirement {
            required: 2,
            expires_at: t0 + Duration::hours(24),
        };
        assert_eq!(judge(&req, &[], t0), Standing::Waiting { received: 0 });
        let one = [vote("alice", Decision::Approve, t0)];
        assert_eq!(judge(&req, &one, t0), Standing::Waiting { received: 1 });
        let two = [
            vote("alice", Decision::Approve, t0),
            vote("bob", Decision::Approve, t0 + Duration::hours(1)),
        ];
        assert_eq!(
            judge(&req, &two, t0 + Duration::hours(30)),
            Standing::Granted
        );
        let no = [
            vote("alice", Decision::Approve, t0),
            vote("carol", Decision::Reject, t0 + Duration::hours(2)),
            vote("bob", Decision::Approve, t0 + Duration::hours(3)),
        ];
        assert_eq!(
            judge(&req, &no, t0 + Duration::hours(3)),
            Standing::Rejected {
                by: "carol".into(),
                comment: None
            }
        );
    }

    #[test]
    fn the_window_closes() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let req = Requirement {
            required: 1,
            expires_at: t0 + Duration::hours(1),
        };
        assert_eq!(judge(&req, &[], t0 + Duration::hours(1)), Standing::Expired);
        let late = [vote("alice", Decision::Approve, t0 + Duration::hours(2))];
        assert_eq!(
            judge(&req, &late, t0 + Duration::hours(2)),
            Standing::Expired,
            "a vote after the window does not count"
        );
    }
}
