// manifest-check strictly decodes Kubernetes manifests into the real API types.
//
// Usage: manifest-check FILE...   (or "-"/no argument: standard input)
//
// Every YAML document must name a known apiVersion and kind (kinds.go) and decode into
// that kind's Go type with no unknown field, no duplicate field and no mistyped value
// (a string where a number goes, a malformed quantity). The first problem of each document
// is printed as "FILE: document N (Kind name): field.path: message"; the exit status is 1
// when any document fails, 2 for a usage or read error, 0 otherwise. Empty documents
// (a trailing "---") are skipped. It checks the shape, not the semantics: the API server's
// validation (for example label selector matching the template) is not repeated here.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		args = []string{"-"}
	}
	failed, checked := 0, 0
	for _, name := range args {
		var data []byte
		var err error
		if name == "-" {
			data, err = io.ReadAll(stdin)
			name = "<stdin>"
		} else {
			data, err = os.ReadFile(name)
		}
		if err != nil {
			fmt.Fprintf(stderr, "manifest-check: %v\n", err)
			return 2
		}
		problems, n := checkStream(data)
		checked += n
		for _, p := range problems {
			failed++
			fmt.Fprintf(stderr, "%s: %s\n", name, p)
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "manifest-check: %d of %d documents failed\n", failed, checked)
		return 1
	}
	fmt.Fprintf(stdout, "manifest-check: %d documents ok\n", checked)
	return 0
}

// checkStream returns one message per failing document and the number of documents read.
func checkStream(data []byte) ([]string, int) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var problems []string
	count := 0
	for index := 1; ; index++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return problems, count
		}
		if err != nil {
			return append(problems, fmt.Sprintf("document %d: %v", index, err)), count
		}
		if isBlank(doc) {
			index--
			continue
		}
		count++
		if msg := checkDocument(doc); msg != "" {
			problems = append(problems, fmt.Sprintf("document %d %s", index, msg))
		}
	}
}

// isBlank is true for a document of only comments and white space.
func isBlank(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && line != "---" {
			return false
		}
	}
	return true
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// checkDocument returns "" for a document that decodes strictly, else "(Kind name): problem".
func checkDocument(doc []byte) string {
	// YAMLToJSON rejects duplicate keys and non-string keys; the JSON is what the API
	// server sees after kubectl's conversion.
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return fmt.Sprintf("(?): not valid YAML: %v", err)
	}
	var head header
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &head); err != nil {
		return fmt.Sprintf("(?): not an object with apiVersion and kind: %v", err)
	}
	label := fmt.Sprintf("(%s %s)", orQuestion(head.Kind), orQuestion(head.Metadata.Name))
	if head.APIVersion == "" || head.Kind == "" {
		return label + ": apiVersion and kind are required"
	}
	newObject, ok := kinds[gvk{head.APIVersion, head.Kind}]
	if !ok {
		return fmt.Sprintf("%s: unknown apiVersion/kind %s/%s", label, head.APIVersion, head.Kind)
	}
	if head.Metadata.Name == "" {
		return label + ": metadata.name is required"
	}
	strict, err := kjson.UnmarshalStrict(js, newObject(), kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		// Type errors read "cannot unmarshal string into Go struct field
		// Deployment.spec.replicas of type int32": the path is in the message.
		return fmt.Sprintf("%s: %v", label, err)
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return fmt.Sprintf("%s: %s", label, strings.Join(msgs, "; "))
	}
	return ""
}

func orQuestion(s string) string {
	if s == "" {
		return "?"
	}
	return s
}
