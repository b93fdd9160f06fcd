//! Brokers as resources: a name and a default `delivery` for the triggers
//! on it that set none (Knative's `Broker`). Events may be posted to any
//! broker name; a stored broker only adds its default.

use serde_json::{Value, json};

use crate::trigger::{DeliverySpec, TriggerError};

/// A broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// DNS-label name.
    pub name: String,
    /// The retry policy of its triggers that set none.
    pub delivery: Option<DeliverySpec>,
}

impl Broker {
    /// Parses `{"name", "delivery"}`; `name`, when given (from the URL),
    /// must agree with the body's.
    pub fn parse(value: &Value, name: Option<&str>) -> Result<Broker, TriggerError> {
        let invalid = |path: &str, reason: String| TriggerError {
            path: path.to_string(),
            reason,
        };
        let Value::Object(map) = value else {
            return Err(invalid("$", "a broker must be a JSON object".into()));
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !["name", "delivery", "triggers", "stored"].contains(&k.as_str()))
        {
            return Err(invalid(
                "$",
                format!("unknown field {unknown:?}; known: name, delivery"),
            ));
        }
        let name = match (map.get("name"), name) {
            (Some(Value::String(body)), Some(url)) if body != url => {
                return Err(invalid(
                    "name",
                    format!("{body:?} differs from {url:?} in the URL"),
                ));
            }
            (Some(Value::String(body)), _) => body.clone(),
            (None, Some(url)) => url.to_string(),
            (None, None) => return Err(invalid("name", "is required".into())),
            (Some(_), _) => return Err(invalid("name", "must be a string".into())),
        };
        if !sluice_store::is_dns_label(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} must be 1 to 63 lowercase letters, digits and `-`"),
            ));
        }
        let delivery = match map.get("delivery") {
            None | Some(Value::Null) => None,
            Some(delivery) => Some(DeliverySpec::parse(delivery, "delivery")?),
        };
        Ok(Broker { name, delivery })
    }

    /// The JSON the API shows and the store keeps.
    pub fn to_json(&self) -> Value {
        let mut view = json!({"name": self.name});
        if let Some(delivery) = &self.delivery {
            view["delivery"] = delivery.to_json();
        }
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
        for (bad, field) in [
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
