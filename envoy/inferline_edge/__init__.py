"""inferline edge: xDS control plane, rate-limit service and dev PKI for Envoy."""
