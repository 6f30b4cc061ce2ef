"""The doctor's checks (`Doctor.run`): is the cluster set up so that new pods rotate?

Each check is pass, warn or fail, with the fix. The webhook form is checked when its
MutatingWebhookConfiguration is installed; the MutatingAdmissionPolicy form when only the
policy is. `webhook.commands.doctor` prints the report and sets the exit status.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from dataclasses import asdict, dataclass
from typing import Any

from webhook.cluster.client import AccessDenied, Cluster, Json
from webhook.config import Settings
from webhook.policy import POLICY_NAME

PASS, WARN, FAIL = "pass", "warn", "fail"
TLS_SECRET = "istio-spiffe-webhook-tls"
MIN_DAYS_LEFT = 14
ISTIO_INJECTOR_PREFIXES = ("istio-sidecar-injector", "istio-revision-tag-")
GROUP = "admissionregistration.k8s.io"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    fix: str = ""


class Doctor:
    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        tls_secret: str = TLS_SECRET,
        istio_namespace: str = "istio-system",
        policy_name: str = POLICY_NAME,
    ) -> None:
        self.policy_name = policy_name
        self.cluster = cluster
        self.settings = settings
        self.tls_secret = tls_secret
        self.istio_namespace = istio_namespace
        self.checks: list[Check] = []

    def add(self, name: str, status: str, message: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, message, fix))

    def run(self, trust_domain: str | None = None) -> Json:
        s, c = self.settings, self.cluster
        policy_version = self.admission_forms()
        policy_name = self.policy_name
        webhook = c.call(
            f"MutatingWebhookConfiguration {s.webhook_configuration}",
            c.admission.read_mutating_webhook_configuration,
            s.webhook_configuration,
            missing_ok=True,
        )
        policy = None
        if policy_version is not None:
            api = c.admission if policy_version == "v1" else c.admission_beta
            policy = c.call(
                f"MutatingAdmissionPolicy {policy_name}",
                api.read_mutating_admission_policy,
                policy_name,
                missing_ok=True,
            )
        self.csi_driver()
        form: str | None
        if webhook is not None:
            form = "webhook"
            if policy is not None:
                self.add(
                    "one-form",
                    WARN,
                    f"both the webhook and the MutatingAdmissionPolicy {policy_name} are"
                    " installed: they agree, but each pod is rewritten twice",
                    f"remove one: kubectl delete mutatingadmissionpolicy/{policy_name}"
                    f" mutatingadmissionpolicybinding/{policy_name}, or kubectl delete"
                    f" mutatingwebhookconfiguration/{s.webhook_configuration}",
                )
            self.webhook_checks(webhook)
        elif policy is not None:
            form = "policy"
            assert policy_version is not None
            self.policy_checks(policy, policy_version, policy_name)
        else:
            form = None
            self.add(
                "installed",
                FAIL,
                f"neither the MutatingWebhookConfiguration {s.webhook_configuration} nor a"
                f" MutatingAdmissionPolicy {policy_name} is installed: new pods are not rewritten",
                "install it: kubectl apply -k manifests/overlays/cert-manager (or certs/ with"
                " self-managed certificates, or manifests/overlays/policy on Kubernetes 1.36+)",
            )
        self.namespaces()
        if trust_domain is not None:
            self.trust_domain(trust_domain)
        summary = {k: sum(1 for ch in self.checks if ch.status == k) for k in (PASS, WARN, FAIL)}
        return {"form": form, "checks": [asdict(ch) for ch in self.checks], "summary": summary}

    # --- both forms ------------------------------------------------------------------
    def admission_forms(self) -> str | None:
        """Which API version serves MutatingAdmissionPolicy, if any; adds the check."""
        c = self.cluster
        version = c.get("the API server's version", c.version_api.get_code)
        git_version = str(version.get("gitVersion") or "unknown")
        groups = c.get("the API groups", c.apis.get_api_versions)
        versions = {
            str(v.get("version"))
            for g in groups.get("groups") or []
            if g.get("name") == GROUP
            for v in g.get("versions") or []
        }
        served: str | None = None
        for candidate, api in (("v1", c.admission), ("v1beta1", c.admission_beta)):
            if candidate not in versions:
                continue
            resources = c.call(
                f"the resources of {GROUP}/{candidate}",
                api.get_api_resources,
                missing_ok=True,
            )
            names = {r.get("name") for r in (resources or {}).get("resources") or []}
            if "mutatingadmissionpolicies" in names:
                served = candidate
                break
        if served == "v1":
            message = (
                f"API server {git_version}: both forms work; the MutatingAdmissionPolicy form"
                f" is served as {GROUP}/v1"
            )
        elif served == "v1beta1":
            message = (
                f"API server {git_version}: both forms work; the MutatingAdmissionPolicy form"
                f" only as {GROUP}/v1beta1 (render it with"
                f" `istio-spiffe-webhook policy --api-version v1beta1`)"
            )
        else:
            message = (
                f"API server {git_version}: only the webhook form works; the"
                " MutatingAdmissionPolicy form needs Kubernetes 1.36+, or 1.34-1.35 with the"
                f" MutatingAdmissionPolicy feature gate and {GROUP}/v1beta1 enabled"
            )
        self.add("admission-forms", PASS, message)
        return served

    def csi_driver(self) -> None:
        driver = self.settings.csi_driver
        found = self.cluster.call(
            f"CSIDriver {driver}",
            self.cluster.storage.read_csi_driver,
            driver,
            missing_ok=True,
        )
        if found is None:
            self.add(
                "csi-driver",
                FAIL,
                f"CSIDriver {driver} is not installed: rewritten pods cannot start"
                " (their workload-socket volume cannot be mounted)",
                "install the SPIFFE CSI driver (for SPIRE: the spiffe-csi-driver chart or"
                " manifests) or set csi_driver to the driver you run",
            )
        else:
            self.add("csi-driver", PASS, f"CSIDriver {driver} is installed")

    def namespaces(self) -> None:
        s, c = self.settings, self.cluster
        selector = f"{s.inject_label}={s.inject_enabled_value}"
        opted_in = list(c.items("namespaces", c.core.list_namespace, label_selector=selector))
        if not opted_in:
            self.add(
                "namespaces",
                WARN,
                f"no namespace is labelled {selector}: the webhook rewrites nothing",
                f"kubectl label namespace <namespace> {selector}",
            )
            return
        disabled: list[str] = []
        unlabelled: list[str] = []
        for ns in opted_in:
            labels = (ns.get("metadata") or {}).get("labels") or {}
            name = str((ns.get("metadata") or {}).get("name"))
            if labels.get("istio-injection") == "enabled" or (
                "istio.io/rev" in labels and labels.get("istio-injection") != "disabled"
            ):
                continue
            (disabled if labels.get("istio-injection") == "disabled" else unlabelled).append(name)
        if disabled:
            self.add(
                "namespaces",
                FAIL,
                f"labelled {selector} but Istio injection is disabled: {', '.join(disabled)}",
                " ; ".join(
                    f"kubectl label namespace {n} istio-injection=enabled --overwrite"
                    for n in disabled
                ),
            )
        elif unlabelled:
            self.add(
                "namespaces",
                WARN,
                f"labelled {selector} without istio-injection=enabled or istio.io/rev:"
                f" {', '.join(unlabelled)} (only pods labelled sidecar.istio.io/inject=true get"
                " a sidecar there)",
                " ; ".join(
                    f"kubectl label namespace {n} istio-injection=enabled" for n in unlabelled
                ),
            )
        else:
            names = ", ".join(str((n.get("metadata") or {}).get("name")) for n in opted_in)
            self.add(
                "namespaces",
                PASS,
                f"every namespace labelled {selector} has Istio injection enabled: {names}",
            )

    def trust_domain(self, expected: str) -> None:
        import yaml

        c, where = self.cluster, self.istio_namespace
        try:
            configmaps = [
                cm
                for cm in c.items(
                    f"ConfigMaps in namespace {where}", c.core.list_namespaced_config_map, where
                )
                if _is_mesh_config(cm)
            ]
        except AccessDenied as denied:
            # The base install grants no access outside the webhook's namespace.
            self.add(
                "trust-domain",
                FAIL,
                f"not checked: {denied}",
                f"allow get and list on configmaps in namespace {where}: for the"
                " istio-spiffe-webhook ServiceAccount, add the kustomize component"
                " manifests/components/istio-mesh-config-reader (its comment says how to"
                " change the namespace); or run doctor without --trust-domain",
            )
            return
        if not configmaps:
            self.add(
                "trust-domain",
                FAIL,
                f"Istio's mesh config (ConfigMap {where}/istio, key mesh) was not found",
                "install Istio, or pass --istio-namespace where it lives",
            )
            return
        wrong = []
        for cm in configmaps:
            name = f"{where}/{cm['metadata']['name']}"
            try:
                mesh = yaml.safe_load(cm["data"]["mesh"]) or {}
            except yaml.YAMLError:
                wrong.append(f"{name}: key mesh is not valid YAML")
                continue
            found = mesh.get("trustDomain") if isinstance(mesh, dict) else None
            found = found or "cluster.local"
            if found != expected:
                wrong.append(f"{name} has trustDomain {found}")
        if wrong:
            self.add(
                "trust-domain",
                FAIL,
                f"{'; '.join(wrong)}, not {expected}: workloads whose SVIDs come from"
                f" {expected} fail mTLS with Istio's expectations",
                f"set meshConfig.trustDomain: {expected} in Istio's install (for example"
                f" istioctl install --set meshConfig.trustDomain={expected}) and restart"
                " the workloads",
            )
        else:
            self.add("trust-domain", PASS, f"Istio's mesh config has trustDomain {expected}")

    # --- the webhook form ------------------------------------------------------------
    def webhook_checks(self, config: Json) -> None:
        s = self.settings
        name = s.webhook_configuration
        webhooks = [w for w in config.get("webhooks") or [] if isinstance(w, dict)]
        if not webhooks:
            self.add(
                "webhook-configuration",
                FAIL,
                f"MutatingWebhookConfiguration {name} has no webhooks",
                "kubectl apply -k manifests/overlays/cert-manager (or certs/)",
            )
            return
        self.add(
            "webhook-configuration",
            PASS,
            f"MutatingWebhookConfiguration {name} is installed"
            f" ({', '.join(str(w.get('name')) for w in webhooks)})",
        )
        not_ifneeded = [
            i for i, w in enumerate(webhooks) if w.get("reinvocationPolicy") != "IfNeeded"
        ]
        if not_ifneeded:
            current = webhooks[not_ifneeded[0]].get("reinvocationPolicy") or "Never"
            ops = ",".join(
                f'{{"op":"add","path":"/webhooks/{i}/reinvocationPolicy","value":"IfNeeded"}}'
                for i in not_ifneeded
            )
            self.add(
                "reinvocation-policy",
                FAIL,
                f"reinvocationPolicy is {current}, not IfNeeded: a pod reaching the webhook"
                " before Istio's injector keeps its 1-hour certificates",
                f"kubectl patch mutatingwebhookconfiguration {name} --type=json -p '[{ops}]'",
            )
        else:
            self.add("reinvocation-policy", PASS, "reinvocationPolicy is IfNeeded")
        side_effects = {str(w.get("sideEffects")) for w in webhooks}
        if side_effects != {"None"}:
            self.add(
                "side-effects",
                FAIL,
                f"sideEffects is {', '.join(sorted(side_effects))}, not None: dry-run requests"
                " (kubectl --dry-run=server) are refused",
                f"kubectl patch mutatingwebhookconfiguration {name} --type=json -p"
                ' \'[{"op":"replace","path":"/webhooks/0/sideEffects","value":"None"}]\'',
            )
        else:
            self.add("side-effects", PASS, "sideEffects is None")
        self.certificates(webhooks)
        self.endpoints()
        self.ordering(webhooks)

    def certificates(self, webhooks: list[Json]) -> None:
        from cryptography import x509

        s, c = self.settings, self.cluster
        secret = c.call(
            f"Secret {self.tls_secret} in namespace {s.namespace}",
            c.core.read_namespaced_secret,
            self.tls_secret,
            s.namespace,
            missing_ok=True,
        )
        where = f"Secret {s.namespace}/{self.tls_secret}"
        chain: list[x509.Certificate] = []
        problem = ""
        if secret is None:
            problem = f"{where} is missing"
        else:
            try:
                pem = base64.b64decode((secret.get("data") or {}).get("tls.crt") or "")
                chain = x509.load_pem_x509_certificates(pem) if pem else []
                if not chain:
                    problem = f"{where} has no tls.crt"
            except (ValueError, binascii.Error):
                problem = f"{where}: tls.crt is not a PEM certificate"
        renew = (
            f"with cert-manager: kubectl -n {s.namespace} describe certificate; self-managed:"
            " istio-spiffe-webhook certs --force && kubectl apply -k certs/"
        )
        if problem:
            self.add("ca-bundle", FAIL, f"cannot check the caBundle: {problem}", renew)
            self.add("serving-certificate", FAIL, problem, renew)
            return
        leaf = chain[0]
        bad = []
        for webhook in webhooks:
            reason = _verify_bundle((webhook.get("clientConfig") or {}).get("caBundle"), chain)
            if reason:
                bad.append(f"{webhook.get('name')}: {reason}")
        if bad:
            self.add(
                "ca-bundle",
                FAIL,
                f"the caBundle does not verify the serving certificate in {where}: "
                + "; ".join(bad)
                + " (the API server cannot call the webhook)",
                "with cert-manager: check the cert-manager.io/inject-ca-from annotation and"
                " cainjector's logs; self-managed: kubectl apply -k certs/ (it sets both)",
            )
        else:
            self.add("ca-bundle", PASS, f"the caBundle verifies the serving certificate in {where}")
        expiry = leaf.not_valid_after_utc
        days = (expiry - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        names = _dns_names(leaf)
        wanted = f"{s.service_name}.{s.namespace}.svc"
        when = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        if days <= 0:
            self.add(
                "serving-certificate", FAIL, f"the serving certificate expired at {when}", renew
            )
        elif days <= MIN_DAYS_LEFT:
            self.add(
                "serving-certificate",
                FAIL,
                f"the serving certificate expires at {when}, in {days:.0f} days"
                f" (less than {MIN_DAYS_LEFT}): renewal is not working",
                renew,
            )
        elif wanted not in names:
            self.add(
                "serving-certificate",
                FAIL,
                f"the serving certificate does not name {wanted} (it names"
                f" {', '.join(names) or 'no DNS names'}): the API server's TLS check fails",
                renew,
            )
        else:
            self.add(
                "serving-certificate",
                PASS,
                f"the serving certificate names {wanted} and expires at {when}, in {days:.0f} days",
            )

    def endpoints(self) -> None:
        s, c = self.settings, self.cluster
        svc = c.call(
            f"Service {s.service_name} in namespace {s.namespace}",
            c.core.read_namespaced_service,
            s.service_name,
            s.namespace,
            missing_ok=True,
        )
        debug = (
            f"kubectl -n {s.namespace} get pods -l app.kubernetes.io/name={s.service_name};"
            f" kubectl -n {s.namespace} describe deployment {s.service_name}"
        )
        if svc is None:
            self.add(
                "service-endpoints",
                FAIL,
                f"Service {s.namespace}/{s.service_name} is missing: the API server cannot"
                " call the webhook",
                "kubectl apply -k manifests/overlays/cert-manager (or certs/)",
            )
            return
        ready = 0
        for slice_ in c.items(
            f"EndpointSlices of Service {s.service_name} in namespace {s.namespace}",
            c.discovery.list_namespaced_endpoint_slice,
            s.namespace,
            label_selector=f"kubernetes.io/service-name={s.service_name}",
        ):
            for endpoint in slice_.get("endpoints") or []:
                # The API: a nil `ready` means ready.
                if (endpoint.get("conditions") or {}).get("ready") is not False:
                    ready += 1
        if ready:
            self.add(
                "service-endpoints",
                PASS,
                f"Service {s.namespace}/{s.service_name} has {ready} ready"
                f" endpoint{'s' if ready != 1 else ''}",
            )
        else:
            self.add(
                "service-endpoints",
                FAIL,
                f"Service {s.namespace}/{s.service_name} has no ready endpoints: pod creation"
                " in opted-in namespaces fails (failurePolicy Fail)",
                debug,
            )

    def ordering(self, webhooks: list[Json]) -> None:
        c, name = self.cluster, self.settings.webhook_configuration
        names = [
            str((item.get("metadata") or {}).get("name"))
            for item in c.items(
                "MutatingWebhookConfigurations",
                c.admission.list_mutating_webhook_configuration,
            )
        ]
        injectors = sorted(n for n in names if n.startswith(ISTIO_INJECTOR_PREFIXES))
        if not injectors:
            self.add(
                "ordering",
                WARN,
                "no Istio injector configuration found (istio-sidecar-injector*,"
                " istio-revision-tag-*): is Istio's sidecar injector installed?",
                "install Istio with its sidecar injector",
            )
            return
        after = [n for n in injectors if n > name]
        if not after:
            self.add(
                "ordering",
                PASS,
                f"{name} sorts after every Istio injector configuration ({', '.join(injectors)})",
            )
        elif all(w.get("reinvocationPolicy") == "IfNeeded" for w in webhooks):
            self.add(
                "ordering",
                WARN,
                f"{name} sorts before {', '.join(after)}; reinvocationPolicy IfNeeded makes the"
                " API server call it again after Istio's injector (one more call per pod)",
                "nothing is broken; to save the second call, name the configuration so it"
                f" sorts after {after[-1]} (setting webhook_configuration)",
            )
        else:
            self.add(
                "ordering",
                FAIL,
                f"{name} sorts before {', '.join(after)} and is not reinvoked: it sees pods"
                " before Istio adds istio-proxy and leaves them with 1-hour certificates",
                f"set reinvocationPolicy: IfNeeded on {name}",
            )

    # --- the policy form -------------------------------------------------------------
    def policy_checks(self, policy: Json, version: str, name: str) -> None:
        c = self.cluster
        spec = policy.get("spec") or {}
        apply = "istio-spiffe-webhook policy | kubectl apply -f -"
        if version == "v1beta1":
            apply = "istio-spiffe-webhook policy --api-version v1beta1 | kubectl apply -f -"
        self.add("policy", PASS, f"MutatingAdmissionPolicy {name} is installed ({GROUP}/{version})")
        if spec.get("reinvocationPolicy") == "IfNeeded":
            self.add("reinvocation-policy", PASS, "reinvocationPolicy is IfNeeded")
        else:
            self.add(
                "reinvocation-policy",
                FAIL,
                f"reinvocationPolicy is {spec.get('reinvocationPolicy') or 'Never'}, not"
                " IfNeeded: policies run before Istio's injector, so without it no pod is"
                " rewritten",
                apply,
            )
        api = c.admission if version == "v1" else c.admission_beta
        bindings = [
            b
            for b in c.items(
                "MutatingAdmissionPolicyBindings",
                api.list_mutating_admission_policy_binding,
            )
            if (b.get("spec") or {}).get("policyName") == name
        ]
        if bindings:
            self.add(
                "policy-binding",
                PASS,
                f"MutatingAdmissionPolicyBinding {bindings[0]['metadata']['name']} binds {name}",
            )
        else:
            self.add(
                "policy-binding",
                FAIL,
                f"no MutatingAdmissionPolicyBinding binds {name}: the policy does nothing",
                apply,
            )
        rendered = rendered_policy(self.settings, version).get("spec") or {}
        keys = ("variables", "mutations")
        if all(spec.get(k) == rendered.get(k) for k in keys):
            self.add(
                "policy-settings",
                PASS,
                "the policy's variables and mutations are what `istio-spiffe-webhook policy`"
                " renders with these settings",
            )
        else:
            self.add(
                "policy-settings",
                WARN,
                "the policy's variables or mutations differ from what `istio-spiffe-webhook"
                " policy` renders with these settings (another version or other settings?)",
                apply,
            )


def rendered_policy(settings: Settings, version: str) -> Json:
    """The MutatingAdmissionPolicy `istio-spiffe-webhook policy` renders."""
    from webhook.policy import render_policy

    documents = render_policy(settings, "v1beta1" if version == "v1beta1" else "v1")
    return next(d for d in documents if d.get("kind") == "MutatingAdmissionPolicy")


def _is_mesh_config(configmap: Json) -> bool:
    name = str((configmap.get("metadata") or {}).get("name"))
    return (name == "istio" or name.startswith("istio-")) and "mesh" in (
        configmap.get("data") or {}
    )


def _dns_names(certificate: Any) -> list[str]:
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]


def _verify_bundle(bundle: Any, chain: list[Any]) -> str:
    """Empty when a certificate of the base64 PEM `bundle` signs `chain` up to it."""
    from cryptography import x509

    if not bundle:
        return "the caBundle is empty"
    try:
        roots = x509.load_pem_x509_certificates(base64.b64decode(bundle, validate=True))
    except (ValueError, binascii.Error):
        return "the caBundle is not base64 of PEM certificates"
    current, rest = chain[0], list(chain[1:])
    for _ in range(len(chain)):
        if any(_issued_by(current, root) for root in roots):
            return ""
        parent = next((c for c in rest if _issued_by(current, c)), None)
        if parent is None:
            break
        rest.remove(parent)
        current = parent
    return f"no certificate in it signed {current.issuer.rfc4514_string()}"


def _issued_by(certificate: Any, issuer: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
