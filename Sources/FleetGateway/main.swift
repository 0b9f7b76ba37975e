// fleet-gateway: accepts devices over mutual TLS, reverses their connections and
// routes users' requests to them by Host (FleetGatewayKit). `fleet-gateway pki ...`
// makes the certificates, `fleet-gateway token ...` users' tokens.
import CLibc
import FleetGatewayKit

exit(gatewayMain())
