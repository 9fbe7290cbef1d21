//! Client keys' spend budgets: what each key with a budget has spent in its current
//! period (a UTC day or calendar month), from the usage the nodes report, and what is left.
//!
//! A key's spend is read from the day rollups once per period (when first asked), then
//! kept current by adding each applied report's costs. (A report committed while that first
//! read runs can be counted twice: an overcount, once per key and period, that errs on
//! the side of the budget.) Every grant round the remainders go
//! to every node ([`crate::fleet::KeyBudget`]); a node also subtracts what it spends
//! itself until the next one arrives, and refuses a key whose remainder is used up.
//! Spend a node has not reported yet is not in the remainder: the worst-case overshoot is
//! what the fleet spends for the key in one report interval and one grant interval, plus
//! the cost of requests in flight (docs/keys.md).

use std::{collections::HashMap, sync::Mutex};

use crate::store::{BudgetPeriod, ClientKeyRecord, Granularity, ReportRecord, Store, StoreError};

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the first day of the month holding `days` (civil calendar,
/// proleptic Gregorian; Howard Hinnant's algorithm).
fn month_start_days(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5; // 0-based
    days - day_of_month
}

/// The start (unix ms) of the period holding `now_ms`, and of the next one.
pub fn period(period: BudgetPeriod, now_ms: i64) -> (i64, i64) {
    let day = now_ms.div_euclid(DAY_MS);
    match period {
        BudgetPeriod::Day => (day * DAY_MS, (day + 1) * DAY_MS),
        BudgetPeriod::Month => {
            let start = month_start_days(day);
            // The next month starts after this one's last day: 28..31 days on.
            let next = (start + 28..=start + 32).find(|d| month_start_days(*d) == *d).expect("a month ends");
            (start * DAY_MS, next * DAY_MS)
        }
    }
}

/// What one key has spent in one period.
#[derive(Debug, Clone, Copy)]
struct Spend {
    period_start_ms: i64,
    usd: f64,
}

/// Spend per key with a budget.
#[derive(Debug, Default)]
pub struct Budgets {
    spend: Mutex<HashMap<String, Spend>>,
}

/// One key's budget as the nodes are told it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Remaining {
    /// The key.
    pub key_id: String,
    /// USD left in the period (0 when spent).
    pub usd: f64,
    /// When the period ends and the budget starts afresh, unix ms.
    pub reset_ms: i64,
}

impl Budgets {
    /// Adds the costs of an applied report to the keys already tracked in their period;
    /// returns them as (key, minute, USD), for the instance that pushes budgets if that
    /// is another one.
    pub fn record(&self, records: &[ReportRecord]) -> Vec<(String, i64, f64)> {
        let spend: Vec<(String, i64, f64)> = records
            .iter()
            .filter(|r| !r.key_id.is_empty() && r.counters.cost_usd > 0.0)
            .map(|r| (r.key_id.clone(), r.minute_ms, r.counters.cost_usd))
            .collect();
        self.add(&spend);
        spend
    }

    /// Adds spend as (key, minute, USD) to the keys already tracked in their period.
    pub fn add(&self, spent: &[(String, i64, f64)]) {
        let mut spend = self.spend.lock().expect("budgets lock");
        for (key_id, minute_ms, usd) in spent {
            if let Some(s) = spend.get_mut(key_id)
                && *minute_ms >= s.period_start_ms
            {
                s.usd += usd;
            }
        }
    }

    /// Forgets what was tracked: the next figures are read from the store (an instance
    /// that starts to lead did not hear of spend while it followed).
    pub fn forget(&self) {
        self.spend.lock().expect("budgets lock").clear();
    }

    /// What `key` has spent in its current period at `now_ms`.
    pub fn spent(&self, store: &Store, key: &ClientKeyRecord, now_ms: i64) -> Result<f64, StoreError> {
        let (start, _) = period(key.budget_period, now_ms);
        let mut spend = self.spend.lock().expect("budgets lock");
        if let Some(s) = spend.get(&key.id).filter(|s| s.period_start_ms == start) {
            return Ok(s.usd);
        }
        let mut usd = 0.0;
        for row in store.usage_rows(Granularity::Day, start, now_ms + 1) {
            let row = row?;
            if row.key_id == key.id && row.bucket_ms >= start {
                usd += row.counters.cost_usd;
            }
        }
        spend.insert(key.id.clone(), Spend { period_start_ms: start, usd });
        Ok(usd)
    }

    /// The remainder of every key with a budget; keys without one are forgotten.
    pub fn remaining(&self, store: &Store, keys: &[ClientKeyRecord], now_ms: i64) -> Vec<Remaining> {
        self.spend.lock().expect("budgets lock").retain(|id, _| keys.iter().any(|k| &k.id == id && k.budget_usd > 0.0));
        keys.iter()
            .filter(|k| k.budget_usd > 0.0)
            .filter_map(|k| {
                let spent = self.spent(store, k, now_ms).ok()?;
                let (_, reset_ms) = period(k.budget_period, now_ms);
                Some(Remaining { key_id: k.id.clone(), usd: (k.budget_usd - spent).max(0.0), reset_ms })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(days: i64) -> i64 {
        days * DAY_MS
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-12-04T13:00Z is day 20_791.
        let now = ms(20_791) + 13 * 3_600_000;
        assert_eq!(period(BudgetPeriod::Day, now), (ms(20_791), ms(20_792)));
        // December 2026: from day 20_788 (Dec 1) to 20_819 (Jan 1, 2027).
        assert_eq!(period(BudgetPeriod::Month, now), (ms(20_788), ms(20_819)));
        // February of a leap year (2028-02-10) is 29 days long.
        let feb_2028 = ms(21_224);
        let (start, end) = period(BudgetPeriod::Month, feb_2028);
        assert_eq!((end - start) / DAY_MS, 29);
        assert_eq!(period(BudgetPeriod::Month, 0), (0, ms(31)), "January 1970");
    }
}
