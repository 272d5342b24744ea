// Command render is a test-only stand-in for `helm template`: it renders a chart with Go's
// text/template and sprig, implementing the Helm built-ins the pybaetyl charts use, so the tests
// in tests/deploy can check the manifests without a Helm binary or a Kubernetes API server.
//
//	render -chart helm/pybaetyl [-f override.yaml]... [-name R] [-namespace N] [-upgrade] [-notes]
//
// What it implements, as Helm 3 does:
//
//   - .Values: values.yaml deep-merged with each -f file in order (a null removes a key); numbers
//     become float64, as Helm's YAML-through-JSON parsing makes them;
//   - .Release (Name, Namespace, Service, IsInstall, IsUpgrade, Revision), .Chart (Chart.yaml with
//     capitalised keys: Name, Version, AppVersion, ...), .Template (Name, BasePath), .Capabilities
//     (KubeVersion only);
//   - include, tpl, required, toYaml, fromYaml, toJson, lookup (always empty, as in
//     `helm template`); sprig's functions without env and expandenv, as Helm removes them; fail;
//   - every file under templates/ is parsed; files whose name starts with "_" and NOTES.txt are not
//     rendered as manifests; -notes renders NOTES.txt alone.
//
// Missing map keys are errors (as `helm lint --strict`), so a typo in a values path fails the
// tests instead of rendering an empty string. Output: each non-empty template as
// "---\n# Source: <chart>/templates/<file>\n<text>", in file name order; errors go to stderr with
// exit status 1.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

const recursionMax = 1000

func main() {
	var overrides fileList
	chartDir := flag.String("chart", "", "the chart directory")
	name := flag.String("name", "release", "the release name")
	namespace := flag.String("namespace", "default", "the release namespace")
	upgrade := flag.Bool("upgrade", false, "render as an upgrade (.Release.IsUpgrade)")
	notes := flag.Bool("notes", false, "render NOTES.txt only")
	flag.Var(&overrides, "f", "a values file merged over values.yaml (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fail(errors.New("-chart is required"))
	}
	out, err := render(*chartDir, overrides, *name, *namespace, *upgrade, *notes)
	if err != nil {
		fail(err)
	}
	fmt.Print(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "Error:", err)
	os.Exit(1)
}

func render(chartDir string, overrides []string, name, namespace string, upgrade, notes bool) (string, error) {
	chart, err := loadChart(chartDir)
	if err != nil {
		return "", err
	}
	chartName, _ := chart["Name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml has no name")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, file := range overrides {
		layer, err := readYAMLMap(file)
		if err != nil {
			return "", err
		}
		values = coalesce(values, layer)
	}
	release := map[string]interface{}{
		"Name": name, "Namespace": namespace, "Service": "Helm",
		"IsInstall": !upgrade, "IsUpgrade": upgrade, "Revision": 1,
	}
	capabilities := map[string]interface{}{
		"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
	}

	root := template.New("root").Option("missingkey=error")
	includes := map[string]int{}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["required"] = required
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includes[name] > recursionMax {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includes[name]++
		defer func() { includes[name]-- }()
		var buf strings.Builder
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %w", text, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("error calling tpl: %w", err)
		}
		return buf.String(), nil
	}
	root.Funcs(funcs)

	templatesDir := filepath.Join(chartDir, "templates")
	var names []string
	err = filepath.WalkDir(templatesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(templatesDir, p)
		if err != nil {
			return err
		}
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tname := path.Join(chartName, "templates", filepath.ToSlash(rel))
		if _, err := root.New(tname).Parse(string(text)); err != nil {
			return err
		}
		names = append(names, tname)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	basePath := path.Join(chartName, "templates")
	var out strings.Builder
	for _, tname := range names {
		base := path.Base(tname)
		isNotes := base == "NOTES.txt"
		if strings.HasPrefix(base, "_") || isNotes != notes {
			continue
		}
		data := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        chart,
			"Capabilities": capabilities,
			"Template":     map[string]interface{}{"Name": tname, "BasePath": basePath},
			"Files":        map[string]interface{}{},
		}
		var buf strings.Builder
		if err := root.ExecuteTemplate(&buf, tname, data); err != nil {
			return "", cleanError(err)
		}
		text := buf.String()
		if strings.TrimSpace(text) == "" {
			continue
		}
		if notes {
			out.WriteString(text)
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.TrimRight(text, "\n"))
	}
	return out.String(), nil
}

// cleanError shortens an execution error to Helm's form: "execution error at (<where>): <msg>".
func cleanError(err error) error {
	var exec template.ExecError
	if errors.As(err, &exec) {
		msg := exec.Err.Error()
		for {
			var inner template.ExecError
			if !errors.As(exec.Err, &inner) || inner.Err == exec.Err {
				break
			}
			exec = inner
			msg = inner.Err.Error()
		}
		if i := strings.LastIndex(msg, "error calling "); i >= 0 {
			if j := strings.Index(msg[i:], ": "); j >= 0 {
				msg = msg[i+j+2:]
			}
		}
		return fmt.Errorf("execution error at (%s): %s", exec.Name, msg)
	}
	return err
}

func required(msg string, value interface{}) (interface{}, error) {
	if value == nil {
		return nil, errors.New(msg)
	}
	if s, ok := value.(string); ok && s == "" {
		return nil, errors.New(msg)
	}
	return value, nil
}

// loadChart reads Chart.yaml into the keys Helm's .Chart exposes (Name, Version, AppVersion, ...).
func loadChart(dir string) (map[string]interface{}, error) {
	raw, err := readYAMLMap(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	special := map[string]string{"apiVersion": "APIVersion", "kubeVersion": "KubeVersion"}
	chart := map[string]interface{}{}
	for key, value := range raw {
		if name, ok := special[key]; ok {
			chart[name] = value
		} else {
			chart[strings.ToUpper(key[:1])+key[1:]] = value
		}
	}
	return chart, nil
}

// readYAMLMap parses a YAML file the way Helm does: through JSON, so numbers are float64.
func readYAMLMap(file string) (map[string]interface{}, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var doc interface{}
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if doc == nil {
		return map[string]interface{}{}, nil
	}
	converted, err := jsonRoundTrip(doc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	m, ok := converted.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: the top level is not a map", file)
	}
	return m, nil
}

func jsonRoundTrip(v interface{}) (interface{}, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out interface{}
	err = json.Unmarshal(data, &out)
	return out, err
}

// coalesce merges layer over base as Helm merges values files: maps recursively, anything else
// replaced, a null deleting the key.
func coalesce(base, layer map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(base))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range layer {
		if v == nil {
			delete(out, k)
			continue
		}
		lm, lok := v.(map[string]interface{})
		bm, bok := out[k].(map[string]interface{})
		if lok && bok {
			out[k] = coalesce(bm, lm)
		} else {
			out[k] = v
		}
	}
	return out
}

// toYAML is Helm's toYaml: JSON first (so integral float64s print as integers), then YAML with
// two-space indentation, without the final newline.
func toYAML(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var doc interface{}
	if err := dec.Decode(&doc); err != nil {
		return ""
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(numbers(doc)); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func numbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, item := range t {
			t[k] = numbers(item)
		}
		return t
	case []interface{}:
		for i, item := range t {
			t[i] = numbers(item)
		}
		return t
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	}
	return v
}

func fromYAML(text string) map[string]interface{} {
	var doc interface{}
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	converted, err := jsonRoundTrip(doc)
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, _ := converted.(map[string]interface{})
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}
