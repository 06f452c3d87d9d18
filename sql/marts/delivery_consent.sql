-- Grain: one row per delivered MailerLite or sGTM delivery other than an unsubscribe (delivery_id): whether the
-- consent its destination needs (marketing for MailerLite, analytics for sGTM) was in force when it was sent.
-- Consent in force at a time: the latest ledger decision recorded at or before it for the delivery's
-- user_session_id or naming its event_id (see lead_consent for why that is looked up by session plus event).
-- "When it was sent" is when its delivering request started. That is only looked up where it can matter: if no
-- decision was recorded between the delivery's creation and its completion, the consent in force was the same
-- all along. Otherwise each delivering attempt (a replay can deliver twice) is checked, and every one must pass.
with needing as (
    select delivery_id, event_id, user_session_id, destination, kind, created_at, delivered_at
    from stg_deliveries
    where delivery_status = 'delivered' and destination in ('mailerlite', 'sgtm') and kind <> 'unsubscribe'
),

session_decisions as (
    select user_session_id, recorded_at, marketing_consent, analytics_consent
    from stg_consent_ledger
),

session_timeline as (
    -- Each session decision with the moment the next one replaced it: "in force at t" becomes an equi-join on
    -- the session plus a range test, cheaper than an ASOF join over every delivery.
    select
        *,
        lead(recorded_at) over (partition by user_session_id order by recorded_at) as replaced_at
    from session_decisions
),

event_decisions as (
    select event_id, recorded_at, marketing_consent, analytics_consent
    from stg_consent_ledger
    where consent_source <> 'lead' and event_id is not null
),

at_completion_by_session as (
    select
        needing.*,
        timeline.recorded_at as session_decision_at,
        timeline.marketing_consent as session_marketing,
        timeline.analytics_consent as session_analytics
    from needing
    left join session_timeline as timeline
        on timeline.user_session_id = needing.user_session_id
        and needing.delivered_at >= timeline.recorded_at
        and (timeline.replaced_at is null or needing.delivered_at < timeline.replaced_at)
),

at_completion_by_event as (
    select
        needing.delivery_id,
        arg_max(
            {'at': event_decisions.recorded_at,
             'marketing': event_decisions.marketing_consent,
             'analytics': event_decisions.analytics_consent},
            event_decisions.recorded_at
        ) as decision
    from needing
    inner join event_decisions
        on event_decisions.event_id = needing.event_id and event_decisions.recorded_at <= needing.delivered_at
    group by needing.delivery_id
),

at_completion as (
    select
        s.*,
        e.decision is not null
            and (s.session_decision_at is null or e.decision.at > s.session_decision_at) as event_decision_is_latest,
        case when event_decision_is_latest then e.decision.at else s.session_decision_at end as decision_at,
        coalesce(case when event_decision_is_latest then e.decision.marketing else s.session_marketing end, false)
            as marketing_at_completion,
        coalesce(case when event_decision_is_latest then e.decision.analytics else s.session_analytics end, false)
            as analytics_at_completion
    from at_completion_by_session as s
    left join at_completion_by_event as e on e.delivery_id = s.delivery_id
),

changed_in_flight as (
    select delivery_id, event_id, user_session_id, destination
    from at_completion
    where decision_at > created_at
),

sends as (
    select changed_in_flight.*, attempts.attempt_number, attempts.started_at as sent_at
    from changed_in_flight
    inner join stg_delivery_attempts as attempts
        on attempts.delivery_id = changed_in_flight.delivery_id and attempts.attempt_outcome = 'delivered'
),

decisions_before_send as (
    -- Few sends get here, so a plain join and arg_max per send.
    select
        sends.delivery_id,
        sends.attempt_number,
        decisions.recorded_at,
        decisions.marketing_consent,
        decisions.analytics_consent
    from sends
    inner join session_decisions as decisions
        on decisions.user_session_id = sends.user_session_id and decisions.recorded_at <= sends.sent_at
    union all
    select
        sends.delivery_id,
        sends.attempt_number,
        decisions.recorded_at,
        decisions.marketing_consent,
        decisions.analytics_consent
    from sends
    inner join event_decisions as decisions
        on decisions.event_id = sends.event_id and decisions.recorded_at <= sends.sent_at
),

at_send as (
    select
        sends.delivery_id,
        sends.attempt_number,
        coalesce(
            arg_max(
                case sends.destination
                    when 'mailerlite' then decisions.marketing_consent
                    else decisions.analytics_consent
                end,
                decisions.recorded_at
            ),
            false
        ) as consent_in_force
    from sends
    left join decisions_before_send as decisions
        on decisions.delivery_id = sends.delivery_id and decisions.attempt_number = sends.attempt_number
    group by sends.delivery_id, sends.attempt_number
),

per_send_verdict as (
    select delivery_id, bool_and(consent_in_force) as in_force_at_every_send
    from at_send
    group by delivery_id
),

final as (
    select
        c.delivery_id,
        c.event_id,
        c.user_session_id,
        c.destination,
        c.kind,
        c.created_at,
        c.delivered_at,
        c.decision_at as consent_decision_at,
        c.marketing_at_completion,
        c.analytics_at_completion,
        c.decision_at > c.created_at as consent_changed_before_completion,
        coalesce(
            v.in_force_at_every_send,
            case c.destination when 'mailerlite' then c.marketing_at_completion else c.analytics_at_completion end
        ) as made_with_consent
    from at_completion as c
    left join per_send_verdict as v on v.delivery_id = c.delivery_id
)

select * from final
