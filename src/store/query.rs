//! The message-log and delivery-list queries, built once for both stores:
//! the filters, keyset positions and limits of the list routes, rendered in
//! either SQL dialect (`placeholder(n)` writes the n-th parameter).

use crate::domain::outbox::DeliveryState;
use crate::domain::{DeliveryId, MessageId, ProviderName, Status, SubscriptionId};

use super::codec::{DELIVERY_COLUMNS, message_select_list};

/// Filters and position for `GET /messages`. Results are newest first,
/// ordered by `(enqueued, id)` descending.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageQuery {
    pub statuses: Vec<Status>,
    pub recipient: Option<String>,
    pub notification: Option<String>,
    pub event: Option<String>,
    pub list: Option<String>,
    pub message_id: Option<MessageId>,
    pub provider: Option<ProviderName>,
    pub tag: Option<String>,
    /// Only messages enqueued at or after this time (epoch ms).
    pub enqueued_after: Option<i64>,
    /// Only messages enqueued before this time (epoch ms).
    pub enqueued_before: Option<i64>,
    /// Continue after this `(enqueued, id)` position.
    pub after: Option<(i64, MessageId)>,
    /// Rows to return; the store fetches one more to learn if there are more.
    pub limit: usize,
}

impl MessageQuery {
    /// One query per kind of filter the API offers, alone and combined
    /// (the plan check runs each of them).
    #[doc(hidden)]
    pub fn examples() -> Vec<MessageQuery> {
        let text = |s: &str| Some(s.to_owned());
        let base = MessageQuery { limit: 50, ..MessageQuery::default() };
        let after = Some((1_700_000_000_000, MessageId::from_trusted("m".into())));
        vec![
            base.clone(),
            MessageQuery { after: after.clone(), ..base.clone() },
            MessageQuery { statuses: vec![Status::Delivered], after: after.clone(), ..base.clone() },
            MessageQuery { statuses: vec![Status::Delivered, Status::Opened, Status::Clicked], ..base.clone() },
            MessageQuery { recipient: text("a@example.com"), after: after.clone(), ..base.clone() },
            MessageQuery { notification: text("welcome"), ..base.clone() },
            MessageQuery { event: text("signup"), ..base.clone() },
            MessageQuery { list: text("news"), ..base.clone() },
            MessageQuery { message_id: Some(MessageId::from_trusted("m".into())), ..base.clone() },
            MessageQuery { provider: ProviderName::parse("sendgrid").ok(), ..base.clone() },
            MessageQuery { tag: text("vip"), after: after.clone(), ..base.clone() },
            MessageQuery { tag: text("vip"), statuses: vec![Status::Delivered, Status::Opened], ..base.clone() },
            MessageQuery { enqueued_after: Some(1), enqueued_before: Some(2), ..base.clone() },
            MessageQuery {
                notification: text("welcome"),
                statuses: vec![Status::Sent, Status::Delivered],
                after: after.clone(),
                ..base.clone()
            },
            MessageQuery {
                statuses: vec![Status::Undeliverable],
                provider: ProviderName::parse("ses").ok(),
                enqueued_after: Some(1),
                after,
                ..base
            },
        ]
    }
}

/// Filters for a subscription's deliveries, newest first.
#[derive(Debug, Clone)]
pub struct DeliveryQuery {
    pub subscription_id: SubscriptionId,
    pub state: Option<DeliveryState>,
    /// Continue after this `(created_at, id)` position.
    pub after: Option<(i64, DeliveryId)>,
    /// Rows to return; the store fetches one more.
    pub limit: usize,
}

/// A bound parameter of a built query.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// Builds the keyset-paged `GET /messages` query. `placeholder(n)` renders
/// the n-th (1-based) parameter in the backend's dialect.
///
/// With several statuses, each status gets its own ordered, limited scan
/// (each served by the `(status, enqueued_at, id)` index) and the results are
/// merged, so a page never sorts every matching row.
pub(crate) fn list_query(q: &MessageQuery, placeholder: fn(usize) -> String) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    if q.statuses.len() <= 1 {
        let sql = scan(q, q.statuses.first().copied(), &mut params, placeholder);
        return (sql, params);
    }
    let parts: Vec<String> = q
        .statuses
        .iter()
        .enumerate()
        .map(|(i, status)| format!("SELECT * FROM ({}) AS s{i}", scan(q, Some(*status), &mut params, placeholder)))
        .collect();
    params.push(Param::Int(q.limit as i64 + 1));
    let limit = placeholder(params.len());
    let sql = format!(
        "SELECT * FROM ({}) AS u ORDER BY u.enqueued_at DESC, u.id DESC LIMIT {limit}",
        parts.join(" UNION ALL ")
    );
    (sql, params)
}

/// `SELECT count(*)` over the list query, bounded by `cap + 1` rows.
pub(crate) fn count_query(q: &MessageQuery, cap: usize, placeholder: fn(usize) -> String) -> (String, Vec<Param>) {
    let bounded = MessageQuery { after: None, limit: cap, ..q.clone() };
    let (sql, params) = list_query(&bounded, placeholder);
    (format!("SELECT count(*) FROM ({sql}) AS counted"), params)
}

/// One ordered, limited scan for at most one status.
///
/// A status together with a column filter (recipient, notification, event,
/// list, provider) picks the page's ids first from the column's index, which
/// carries the status, and reads only those rows: checking the status on the
/// table would read one row per index entry, however few of them match.
fn scan(q: &MessageQuery, status: Option<Status>, params: &mut Vec<Param>, placeholder: fn(usize) -> String) -> String {
    let column_filter =
        [&q.recipient, &q.notification, &q.event, &q.list].iter().any(|v| v.is_some()) || q.provider.is_some();
    let ids_first = status.is_some() && column_filter && q.tag.is_none() && q.message_id.is_none();
    let m = if ids_first { "k" } else { "m" };
    let mut conds: Vec<String> = Vec::new();
    let mut bind = |p: Param| {
        params.push(p);
        placeholder(params.len())
    };
    // With a tag filter the scan is driven from message_tags, whose key
    // carries the paging order, so the tag index serves the whole query.
    let (from, order_e, order_id) = if let Some(tag) = &q.tag {
        let p = bind(Param::Text(tag.clone()));
        conds.push(format!("t.tag = {p}"));
        ("message_tags t JOIN messages m ON m.id = t.message_id", "t.enqueued_at", "t.message_id")
    } else if ids_first {
        ("messages k", "k.enqueued_at", "k.id")
    } else {
        ("messages m", "m.enqueued_at", "m.id")
    };
    if let Some(status) = status {
        let p = bind(Param::Text(status.as_str().to_owned()));
        conds.push(format!("{m}.status = {p}"));
    }
    for (column, value) in
        [("recipient", &q.recipient), ("notification", &q.notification), ("event", &q.event), ("list", &q.list)]
    {
        if let Some(v) = value {
            let p = bind(Param::Text(v.clone()));
            conds.push(format!("{m}.{column} = {p}"));
        }
    }
    if let Some(id) = &q.message_id {
        let p = bind(Param::Text(id.as_str().to_owned()));
        conds.push(format!("{m}.id = {p}"));
    }
    if let Some(provider) = &q.provider {
        let p = bind(Param::Text(provider.as_str().to_owned()));
        conds.push(format!("{m}.provider = {p}"));
    }
    if let Some(after) = q.enqueued_after {
        let p = bind(Param::Int(after));
        conds.push(format!("{order_e} >= {p}"));
    }
    if let Some(before) = q.enqueued_before {
        let p = bind(Param::Int(before));
        conds.push(format!("{order_e} < {p}"));
    }
    if let Some((e, id)) = &q.after {
        let pe = bind(Param::Int(*e));
        let pid = bind(Param::Text(id.as_str().to_owned()));
        conds.push(format!("({order_e}, {order_id}) < ({pe}, {pid})"));
    }
    let limit = bind(Param::Int(q.limit as i64 + 1));
    let where_clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    let page = format!("FROM {from}{where_clause} ORDER BY {order_e} DESC, {order_id} DESC LIMIT {limit}");
    if ids_first {
        format!(
            "SELECT {} FROM (SELECT k.id, k.enqueued_at {page}) AS p JOIN messages m ON m.id = p.id \
             ORDER BY p.enqueued_at DESC, p.id DESC",
            message_select_list("m")
        )
    } else {
        format!("SELECT {} {page}", message_select_list("m"))
    }
}

/// A subscription's deliveries, newest first: `{1}` the subscription,
/// `{2}`/`{3}` the position to continue after, `{4}` the row limit. The
/// state is written into the text (one statement per state), so that the
/// index of unfinished deliveries serves a listing of pending, failed or
/// dead ones.
pub(crate) fn list_deliveries_query(state: Option<DeliveryState>, placeholder: fn(usize) -> String) -> String {
    let state = match state {
        Some(state) => format!("AND state = '{}' ", state.as_str()),
        None => String::new(),
    };
    let p = |n| placeholder(n);
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE subscription_id = {} {state}\
         AND (CAST({} AS BIGINT) IS NULL OR (created_at, id) < ({}, {})) \
         ORDER BY created_at DESC, id DESC LIMIT {}",
        p(1),
        p(2),
        p(2),
        p(3),
        p(4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_binds_every_filter() {
        let q = MessageQuery {
            statuses: vec![Status::Delivered, Status::Opened],
            recipient: Some("r".into()),
            tag: Some("t".into()),
            enqueued_after: Some(5),
            after: Some((10, MessageId::parse("m").expect("id"))),
            limit: 20,
            ..MessageQuery::default()
        };
        let (sql, params) = list_query(&q, |n| format!("${n}"));
        assert!(sql.contains("FROM message_tags t JOIN messages m"), "{sql}");
        // One scan per status, each bound separately, merged under one limit.
        assert!(sql.contains("m.status = $2"), "{sql}");
        assert!(sql.contains("m.status = $9"), "{sql}");
        assert!(sql.contains("(t.enqueued_at, t.message_id) < ($5, $6)"), "{sql}");
        assert!(sql.contains(" UNION ALL "), "{sql}");
        assert!(sql.ends_with("ORDER BY u.enqueued_at DESC, u.id DESC LIMIT $15"), "{sql}");
        assert_eq!(params.len(), 15);
        assert_eq!(params[14], Param::Int(21));
        let single = MessageQuery { statuses: vec![Status::Sent], limit: 5, ..MessageQuery::default() };
        let (sql, params) = list_query(&single, |n| format!("?{n}"));
        assert!(!sql.contains("UNION"), "{sql}");
        assert_eq!(params, vec![Param::Text("SENT".into()), Param::Int(6)]);
    }

    #[test]
    fn a_status_with_a_column_filter_picks_ids_from_the_index_first() {
        let q = MessageQuery {
            statuses: vec![Status::Sent],
            notification: Some("welcome".into()),
            after: Some((10, MessageId::parse("m").expect("id"))),
            limit: 50,
            ..MessageQuery::default()
        };
        let (sql, params) = list_query(&q, |n| format!("${n}"));
        assert!(
            sql.contains(
                "FROM (SELECT k.id, k.enqueued_at FROM messages k WHERE k.status = $1 AND k.notification = $2 \
                 AND (k.enqueued_at, k.id) < ($3, $4) ORDER BY k.enqueued_at DESC, k.id DESC LIMIT $5) AS p \
                 JOIN messages m ON m.id = p.id ORDER BY p.enqueued_at DESC, p.id DESC"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 5);
        // Without a status, or with a tag, the page is read in one pass.
        for q in
            [MessageQuery { statuses: Vec::new(), ..q.clone() }, MessageQuery { tag: Some("vip".into()), ..q.clone() }]
        {
            let (sql, _) = list_query(&q, |n| format!("${n}"));
            assert!(!sql.contains("AS p JOIN"), "{sql}");
        }
    }
}
