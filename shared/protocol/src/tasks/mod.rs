//! Tasks handed to the DevOps agent (by peers on `toronto.agents.devops.tasks`, or
//! through `toronto.devops.v1.planner.submit`) and the plans the planner makes of them.
//!
//! One module per concern, all re-exported here: the tasks and [`PlanTask`] (`task`);
//! plans, steps and [`PlanEvent`] (`plan`); the planner's requests and replies (`api`);
//! its gates' questions to peers (`gates`); its requests to the deployer (`execute`);
//! SLO status queries to the monitor (`slo`).

mod api;
mod execute;
mod gates;
mod plan;
mod slo;
mod task;

pub use api::*;
pub use execute::*;
pub use gates::*;
pub use plan::*;
pub use slo::*;
pub use task::*;
