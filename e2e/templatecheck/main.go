// Command templatecheck applies Istio injection templates to pods the way istiod does, with
// Go's text/template and Kubernetes' own strategic merge code, and prints the pods as JSON.
// It is how `make e2e` checks istio-spiffe-webhook's template (tests/e2e/test_template_e2e.py
// builds it inside the Kubernetes tree of ../shared/kube-harness/build.sh and runs it).
//
// What istiod does (istio/istio pkg/kube/inject, master of 2026-08-22, the 1.32 line):
// RunTemplate (inject.go) renders each template of the pod with text/template over
// SidecarTemplateData and merges the result into the pod with applyOverlayYAML (webhook.go):
// the pod marshalled from a corev1.Pod to JSON, the rendered YAML read with sigs.k8s.io/yaml,
// both merged by strategicpatch.StrategicMergeMapPatchUsingLookupPatchMeta with corev1.Pod's
// patch metadata, the result read back into a corev1.Pod. Before each merge, when the proxy
// is a native sidecar and the templates so far put it under initContainers while the pod has
// it under containers, it is moved to initContainers. The same template is merged into an
// empty pod too (the "template pod", which that move looks at).
//
// The template data has the fields of SidecarTemplateData that istio-spiffe-webhook's
// template reads, with Istio's types; a template that reads another field fails here. Istio
// gives the pod as submitted; given an injected pod, this gives that pod. The template reads
// only the `sidecar.istio.io/nativeSidecar` annotation, the opt-out label and the names of
// the containers other than istio-proxy, which are the same in both as long as the earlier
// templates added no container but istio-proxy (true of all of Istio's own). (stripPod's
// use of `sidecar.istio.io/status` cannot recover the pod as submitted: the status also
// lists the user's containers that a template changed, as grpc-agent does.) Templates are
// parsed without Sprig's functions, so one that needs them fails.
//
// Input on stdin:  {"templates": {NAME: TEXT}, "cases": [{"name": NAME, "pod": POD,
//
//	"nativeSidecars": BOOL, "templates": [NAME, ...]}]}
//
// Output on stdout: {"results": [{"name": NAME, "pod": POD, "rendered": [TEXT, ...]} or
//
//	{"name": NAME, "error": MESSAGE}]}, one per case, in order.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"
)

const (
	proxyContainerName = "istio-proxy" // Istio's ProxyContainerName
	nativeAnnotation   = "sidecar.istio.io/nativeSidecar"
)

// templateData: the fields of Istio's SidecarTemplateData (inject.go) the template reads.
type templateData struct {
	ObjectMeta     metav1.ObjectMeta
	Spec           corev1.PodSpec
	NativeSidecars bool
}

type input struct {
	Templates map[string]string `json:"templates"`
	Cases     []struct {
		Name           string          `json:"name"`
		Pod            json.RawMessage `json:"pod"`
		NativeSidecars bool            `json:"nativeSidecars"`
		Templates      []string        `json:"templates"`
	} `json:"cases"`
}

type result struct {
	Name     string      `json:"name"`
	Pod      *corev1.Pod `json:"pod,omitempty"`
	Rendered []string    `json:"rendered,omitempty"`
	Error    string      `json:"error,omitempty"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail("reading the input: %v", err)
	}
	parsed := map[string]*template.Template{}
	for name, text := range in.Templates {
		t, err := template.New(name).Parse(text)
		if err != nil {
			fail("template %s: %v", name, err)
		}
		parsed[name] = t
	}
	results := []result{}
	for _, c := range in.Cases {
		r := result{Name: c.Name}
		var pod corev1.Pod
		err := json.Unmarshal(c.Pod, &pod)
		if err == nil {
			r.Pod, r.Rendered, err = inject(&pod, c.NativeSidecars, c.Templates, parsed)
		}
		if err != nil {
			r.Pod, r.Error = nil, err.Error()
		}
		results = append(results, r)
	}
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(map[string][]result{"results": results}); err != nil {
		fail("writing the output: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "templatecheck: "+format+"\n", args...)
	os.Exit(1)
}

// inject is RunTemplate's loop over the templates (inject.go), for one pod.
func inject(pod *corev1.Pod, nativeSidecars bool, names []string, templates map[string]*template.Template) (*corev1.Pod, []string, error) {
	data := templateData{ObjectMeta: pod.ObjectMeta, Spec: pod.Spec, NativeSidecars: nativeSidecars}
	merged, templatePod := pod, &corev1.Pod{}
	rendered := []string{}
	for _, name := range names {
		t, ok := templates[name]
		if !ok {
			return nil, nil, fmt.Errorf("requested template %q not found", name)
		}
		var out bytes.Buffer
		if err := t.Execute(&out, &data); err != nil {
			return nil, nil, fmt.Errorf("template %s: %v", name, err)
		}
		rendered = append(rendered, out.String())
		var err error
		if templatePod, err = applyOverlayYAML(templatePod, out.Bytes()); err != nil {
			return nil, nil, fmt.Errorf("template %s on an empty pod: %v", name, err)
		}
		native := nativeSidecars
		switch merged.Annotations[nativeAnnotation] {
		case "true":
			native = true
		case "false":
			native = false
		}
		if native && has(templatePod.Spec.InitContainers) && has(merged.Spec.Containers) {
			merged = merged.DeepCopy()
			merged.Spec.Containers, merged.Spec.InitContainers = moveContainer(merged.Spec.Containers, merged.Spec.InitContainers)
		}
		if merged, err = applyOverlayYAML(merged, out.Bytes()); err != nil {
			return nil, nil, fmt.Errorf("template %s: %v", name, err)
		}
	}
	return merged, rendered, nil
}

func has(list []corev1.Container) bool {
	return slices.ContainsFunc(list, func(c corev1.Container) bool { return c.Name == proxyContainerName })
}

// moveContainer is webhook.go's moveContainer for the proxy.
func moveContainer(from, to []corev1.Container) ([]corev1.Container, []corev1.Container) {
	for i, c := range from {
		if c.Name == proxyContainerName {
			return slices.Delete(from, i, i+1), append(to, c)
		}
	}
	return from, to
}

// applyOverlayYAML and StrategicMergePatchYAML (webhook.go), with patchHandleUnmarshal.
func applyOverlayYAML(target *corev1.Pod, overlayYAML []byte) (*corev1.Pod, error) {
	currentJSON, err := json.Marshal(target)
	if err != nil {
		return nil, err
	}
	schema, err := strategicpatch.NewPatchMetaFromStruct(corev1.Pod{})
	if err != nil {
		return nil, err
	}
	original := map[string]any{}
	if err := json.Unmarshal(currentJSON, &original); err != nil {
		return nil, fmt.Errorf("strategic merge: %v", err)
	}
	patch := map[string]any{}
	if err := yaml.Unmarshal(overlayYAML, &patch); err != nil {
		return nil, fmt.Errorf("strategic merge: invalid YAML: %v", err)
	}
	merged, err := strategicpatch.StrategicMergeMapPatchUsingLookupPatchMeta(original, patch, schema)
	if err != nil {
		return nil, fmt.Errorf("strategic merge: %v", err)
	}
	patchedJSON, err := json.Marshal(merged)
	if err != nil {
		return nil, err
	}
	pod := corev1.Pod{}
	if err := json.Unmarshal(patchedJSON, &pod); err != nil {
		return nil, fmt.Errorf("unmarshal patched pod: %v", err)
	}
	return &pod, nil
}
