//! Brokers as resources: a name and a default `delivery` for the triggers
//! on it that set none (Knative's `Broker`), and whether client events are
//! de-duplicated (`dedupe`, a Sluice extension, on unless `false`). Events
//! may be posted to any broker name; a stored broker only adds its
//! settings.

use serde_json::{Value, json};

use crate::trigger::{DeliverySpec, TriggerError, check_fields, invalid, resource_name};

/// A broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// DNS-label name.
    pub name: String,
    /// The retry policy of its triggers that set none.
    pub delivery: Option<DeliverySpec>,
    /// A repeat of (source, id) within the de-duplication window is a
    /// duplicate (not delivered again); `false` delivers every post.
    pub dedupe: bool,
}

impl Broker {
    /// Parses `{"name", "delivery"}`; `name`, when given (from the URL),
    /// must agree with the body's.
    pub fn parse(value: &Value, name: Option<&str>) -> Result<Broker, TriggerError> {
        let Value::Object(map) = value else {
            return Err(invalid("$", "a broker must be a JSON object"));
        };
        // A view sent back: its read-only fields change nothing.
        let mut map = map.clone();
        map.retain(|key, _| !["triggers", "stored"].contains(&key.as_str()));
        check_fields(&map, &["name", "delivery", "dedupe"], "$")?;
        let name = resource_name(&map, name)?;
        let delivery = match map.get("delivery") {
            None | Some(Value::Null) => None,
            Some(delivery) => Some(DeliverySpec::parse(delivery, "delivery")?),
        };
        let dedupe = match map.get("dedupe") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(on)) => *on,
            Some(_) => return Err(invalid("dedupe", "must be true or false")),
        };
        Ok(Broker {
            name,
            delivery,
            dedupe,
        })
    }

    /// The JSON the API shows and the store keeps.
    pub fn to_json(&self) -> Value {
        let mut view = json!({"name": self.name});
        if let Some(delivery) = &self.delivery {
            view["delivery"] = delivery.to_json();
        }
        view["dedupe"] = self.dedupe.into();
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_round_trips_and_bad_ones_name_the_field() {
        let value = json!({"name": "payments", "delivery": {"retry": 2, "backoffDelay": "PT1S"}});
        let broker = Broker::parse(&value, Some("payments")).unwrap();
        assert_eq!(broker.delivery.as_ref().unwrap().retry, 2);
        assert_eq!(Broker::parse(&broker.to_json(), None).unwrap(), broker);
        assert!(broker.dedupe, "on unless turned off");
        let off = Broker::parse(&json!({"name": "raw", "dedupe": false}), None).unwrap();
        assert!(!off.dedupe);
        assert_eq!(Broker::parse(&off.to_json(), None).unwrap(), off);
        for (bad, field) in [
            (json!({"name": "p", "dedupe": "no"}), "dedupe"),
            (json!({"name": "Bad Name"}), "name"),
            (
                json!({"name": "p", "delivery": {"retry": "x"}}),
                "delivery.retry",
            ),
            (json!({"name": "p", "colour": 1}), "$"),
            (json!({"name": "other"}), "name"),
        ] {
            let error = Broker::parse(&bad, Some("p")).unwrap_err();
            assert_eq!(error.path, field, "{bad}");
        }
    }
}
