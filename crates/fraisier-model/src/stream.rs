//! The task stream's frames (seed 002's `WS /agents/{id}/task-stream`): the server asks, the
//! agent answers, each answer naming the question it answers. One JSON text message each.
//!
//! The server sends desired states down (`apply`, versioned by their generation) and asks for
//! observations (`observe`) and one-shot commands (`exec`); the agent answers with what its
//! control API would have answered. Questions are independent: an agent answers them in any
//! order, so a long `exec` holds up nothing else.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::{DesiredService, ExecRequest};

/// From the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Ask {
    /// Converge to this desired state; answers the observation right after.
    Apply {
        id: u64,
        desired: Box<DesiredService>,
    },
    /// What runs for a service now; answers `null` when the agent has no such service.
    Observe {
        id: u64,
        fraise: String,
        environment: String,
    },
    /// Run a command to completion; answers its result.
    Exec { id: u64, request: Box<ExecRequest> },
    /// Hash the service's running releases again (drift).
    Verify {
        id: u64,
        fraise: String,
        environment: String,
    },
}

/// From the agent: the answer to question `id`, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
}

/// Why the agent did not do what it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The status its control API answered (0: it could not be reached).
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Ask {
    pub fn id(&self) -> u64 {
        match self {
            Ask::Apply { id, .. }
            | Ask::Observe { id, .. }
            | Ask::Exec { id, .. }
            | Ask::Verify { id, .. } => *id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let ask = Ask::Observe {
            id: 7,
            fraise: "app".into(),
            environment: "production".into(),
        };
        let text = serde_json::to_string(&ask).unwrap();
        assert_eq!(
            text,
            r#"{"type":"observe","id":7,"fraise":"app","environment":"production"}"#
        );
        assert_eq!(serde_json::from_str::<Ask>(&text).unwrap(), ask);
        let answer: Answer = serde_json::from_str(r#"{"id":7,"ok":null}"#).unwrap();
        assert_eq!((answer.id, answer.ok, answer.error), (7, None, None));
        let refused: Answer = serde_json::from_str(
            r#"{"id":8,"error":{"status":409,"code":"STALE_GENERATION","message":"older"}}"#,
        )
        .unwrap();
        assert_eq!(refused.error.unwrap().code, "STALE_GENERATION");
    }
}
