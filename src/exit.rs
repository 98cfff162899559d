//! Exit codes: the contract with scripts and CI. Documented in the README.

/// How a command ended. `main` turns it into the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done; for `plan --detailed-exitcode`, also "nothing to do".
    Success,
    /// A runtime failure (I/O, an internal error).
    Failure,
    /// Invalid input: playbook, provider definition or command-line flags.
    Invalid,
    /// `run`: some credentials are quarantined; `rekey status` says what to do.
    Quarantined,
    /// `run`: stopped by Ctrl-C in a safe state; `rekey resume` finishes it.
    Interrupted,
    /// `run`/`resume`: manual steps wait for an operator; `rekey resume` with the
    /// value finishes them (everything else ended well).
    AwaitingOperator,
    /// `plan --detailed-exitcode`: the plan has work to do; `report
    /// --detailed-exitcode`: a credential is due (overdue or of unknown age).
    PlanHasWork,
    /// `watch`: a key a run retired was used after its retirement.
    RetiredKeyUsed,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Invalid => 2,
            ExitStatus::Quarantined => 3,
            ExitStatus::Interrupted => 4,
            ExitStatus::AwaitingOperator => 5,
            ExitStatus::PlanHasWork => 10,
            ExitStatus::RetiredKeyUsed => 11,
        }
    }
}
