//! PostgreSQL runs prepared statements with a generic plan, which may be
//! made while the tables are still empty and then kept as they grow. Every
//! statement on a table that grows must reach its rows through an index
//! even then: planned generically on an empty database, with the store's
//! session settings, none may scan one of those tables, hash or merge whole
//! tables together, or compare every pair of rows of two sets.

use crate::helpers::{Backend, TestDb};
use hookrelay::store::postgres::sql;

/// The highest `$n` in a statement.
fn parameters(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut highest = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'$' {
            let digits: String = sql[i + 1..].chars().take_while(char::is_ascii_digit).collect();
            highest = highest.max(digits.parse().unwrap_or(0));
        }
    }
    highest
}

/// Joins that do not probe an index: hash and merge joins of whole
/// tables, and nested loops that compare every pair of rows (a join
/// filter), quadratic in the batch size.
fn joins(plan: &str) -> usize {
    plan.matches("Hash Join").count() + plan.matches("Merge Join").count() + plan.matches("Join Filter").count()
}

/// The tables a plan reads with a sequential scan.
fn scanned(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|line| line.split("Seq Scan on ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn no_statement_scans_a_growing_table_even_with_a_generic_plan() {
    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute("SET plan_cache_mode = force_generic_plan").await.expect("set");
    for (name, value) in sql::PLANNER_SETTINGS {
        client.batch_execute(&format!("SET {name} = {value}")).await.expect("set");
    }
    let keyed = sql::keyed();
    let statements = sql::all();
    assert!(statements.len() > keyed.len() + 10, "the message-log queries are included");
    let mut offenders = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        client.batch_execute(&format!("PREPARE s{i} AS {statement}")).await.expect("prepare");
        let args = vec!["NULL"; parameters(statement)].join(", ");
        let explain =
            if args.is_empty() { format!("EXPLAIN EXECUTE s{i}") } else { format!("EXPLAIN EXECUTE s{i}({args})") };
        let plan: String = client
            .simple_query(&explain)
            .await
            .expect("explain")
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|l| format!("{l}\n")),
                _ => None,
            })
            .collect();
        let bad: Vec<String> = scanned(&plan).into_iter().filter(|t| sql::LARGE_TABLES.contains(&t.as_str())).collect();
        let filtered = if keyed.contains(statement) { filtered_index_scans(&plan) } else { Vec::new() };
        if !bad.is_empty() || joins(&plan) > 0 || !filtered.is_empty() {
            offenders.push(format!("{statement}\n{plan}"));
        }
    }
    assert!(offenders.is_empty(), "scans of growing tables:\n\n{}", offenders.join("\n\n"));
}

/// Index scans of a growing table, other than by primary key, that filter
/// what the index yields by a key given to the statement (`column = $n` or
/// an outer row's column): a lookup that took an index holding only some of
/// its keys (on empty tables the costs tie and the planner may pick either)
/// and reads every row sharing the first one. Filters by constants (a
/// claim's `state = 'pending'`) are the ordered scans' own business.
fn filtered_index_scans(plan: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<(&str, usize)> = None;
    for line in plan.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.split(" Scan using ").nth(1) {
            let index = rest.split_whitespace().next().unwrap_or("");
            let table = rest.split(" on ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
            current = (sql::LARGE_TABLES.contains(&table) && !index.ends_with("_pkey")).then_some((rest, indent));
        } else if let Some((scan, scan_indent)) = current {
            if indent <= scan_indent || line.contains("->") {
                current = None;
            } else if let Some(filter) = line.trim_start().strip_prefix("Filter:")
                && keyed_equality(filter)
            {
                out.push(scan.split("  (").next().unwrap_or(scan).to_owned());
            }
        }
    }
    out
}

/// Whether a filter compares a column for equality with a parameter or
/// another relation's column.
fn keyed_equality(filter: &str) -> bool {
    filter.split(" = ").skip(1).any(|right| {
        let operand = right.trim_start_matches('(').split([')', ' ']).next().unwrap_or("");
        operand.starts_with('$') || (operand.contains('.') && !operand.starts_with('\''))
    })
}

#[test]
fn the_plan_reader_finds_scans() {
    assert_eq!(parameters("SELECT $1, $12 FROM x WHERE y = $3"), 12);
    assert_eq!(scanned("Hash Join\n  ->  Seq Scan on messages m  (cost=0.00..1.00)\n"), ["messages"]);
    assert!(scanned("Index Scan using messages_pkey on messages m").is_empty());
    assert_eq!(joins("Hash Join\n  Merge Join\n  Join Filter: (a.id = w.id)"), 3);
    let plan = "Nested Loop\n  ->  Index Scan using messages_provider on messages  (cost=0.12..8.14 rows=1)\n        \
                Index Cond: (provider = r.provider)\n        Filter: (provider_message_id = r.pmid)\n";
    assert_eq!(filtered_index_scans(plan), ["messages_provider on messages"]);
    let plan = "Nested Loop\n  ->  Index Scan using messages_provider_ref on messages  (cost=0.12..8.14 rows=1)\n        \
                Index Cond: ((provider = r.provider) AND (provider_message_id = r.pmid))\n  \
                ->  Seq Scan on subscriptions\n        Filter: enabled\n";
    assert!(filtered_index_scans(plan).is_empty());
    let plan = "Limit\n  ->  Index Scan using deliveries_due_first on deliveries d_1  (cost=0.12..8.17 rows=1)\n        \
                Filter: ((state = 'pending'::text) AND (attempts = 0) AND (subscription_id <> ALL ($4)))\n  \
                ->  Index Scan using deliveries_pkey on deliveries d  (cost=0.14..3.37 rows=1)\n        \
                Filter: ((locked_by = $8) AND (u.lease = locked_until))\n";
    assert!(filtered_index_scans(plan).is_empty());
}
