//! The cost table: what a generation costs in tokens.
//!
//! `cost = clamp(ceil(100 × model factor × (pixels / model's default pixels) × (steps / model's
//! default steps)), 100, 5000)`. The default model at its default settings costs the minimum,
//! 100; doubling the pixels or the steps doubles the price; nothing costs more than 5,000.

pub const MIN_COST: i64 = 100;
pub const MAX_COST: i64 = 5_000;

/// The settings that determine a price.
#[derive(Debug, Clone, Copy)]
pub struct PriceInputs {
    pub cost_factor: f64,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub default_width: usize,
    pub default_height: usize,
    pub default_steps: usize,
}

pub fn cost(p: PriceInputs) -> i64 {
    let pixels = (p.width * p.height) as f64 / (p.default_width.max(1) * p.default_height.max(1)) as f64;
    let steps = p.steps as f64 / p.default_steps.max(1) as f64;
    let raw = (MIN_COST as f64 * p.cost_factor * pixels * steps).ceil();
    if raw.is_finite() {
        (raw as i64).clamp(MIN_COST, MAX_COST)
    } else {
        MAX_COST
    }
}

/// What a run cancelled after `done` of `steps` steps is charged: its share of the price, at
/// least the minimum (or the whole price when that is below the minimum).
pub fn partial_cost(cost: i64, done: usize, steps: usize) -> i64 {
    let share = (cost as f64 * done as f64 / steps.max(1) as f64).ceil() as i64;
    share.clamp(MIN_COST.min(cost), cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_runs_pay_for_the_steps_done() {
        assert_eq!(partial_cost(400, 10, 100), 100, "at least the minimum");
        assert_eq!(partial_cost(400, 50, 100), 200);
        assert_eq!(partial_cost(400, 100, 100), 400);
        assert_eq!(partial_cost(400, 0, 100), 100);
        assert_eq!(partial_cost(5000, 1, 3), 1667);
    }

    fn at(width: usize, height: usize, steps: usize, factor: f64) -> i64 {
        cost(PriceInputs { cost_factor: factor, width, height, steps, default_width: 128, default_height: 128, default_steps: 20 })
    }

    #[test]
    fn defaults_cost_the_minimum_and_price_scales_with_work() {
        assert_eq!(at(128, 128, 20, 1.0), 100);
        assert_eq!(at(128, 128, 4, 1.0), 100, "less work than the default still costs the minimum");
        assert_eq!(at(256, 128, 20, 1.0), 200);
        assert_eq!(at(256, 256, 40, 1.0), 800);
        assert_eq!(at(128, 128, 30, 1.0), 150);
        assert_eq!(at(128, 128, 20, 2.5), 250);
        assert_eq!(at(1024, 1024, 100, 1.0), 5000, "capped");
    }
}
