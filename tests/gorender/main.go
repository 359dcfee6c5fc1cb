// gorender renders Ollama Go chat templates with the real text/template package.
//
// It mirrors what the Ollama server gives a template (template/template.go and the chat
// handler): a Modelfile SYSTEM prepended when the request has no system message,
// consecutive same-role messages collated, messages mode when the template uses .Messages,
// legacy .System/.Prompt/.Response mode otherwise (the last turn cut after {{ .Response }}),
// option missingkey=zero and Ollama's template functions.
//
// Input on stdin:  {"jobs": [{"template": "...", "messages": [{"role","content"}], "system": "...", "parse_only": false}]}
// Output on stdout: {"results": [{"output": "..."} | {"error": "..."}]}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type ToolCallFunction struct {
	Index     int
	Name      string
	Arguments args
}

type ToolCall struct {
	ID       string
	Function ToolCallFunction
}

type args map[string]any

func (a args) String() string {
	if a == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type Message struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []ToolCall
	ToolName   string
	ToolCallID string
}

type inMessage struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	ToolCalls []struct {
		Function struct {
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type job struct {
	Template  string      `json:"template"`
	Messages  []inMessage `json:"messages"`
	System    string      `json:"system"`
	Tools     []any       `json:"tools"`
	ParseOnly bool        `json:"parse_only"`
}

type result struct {
	Output *string `json:"output,omitempty"`
	Error  *string `json:"error,omitempty"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":      func(...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate":    func(...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string { return "any" },
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var out []string
		for _, c := range n.Nodes {
			out = append(out, identifiers(c)...)
		}
		return out
	case *parse.TemplateNode:
		if n.Pipe != nil {
			return identifiers(n.Pipe)
		}
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		out := identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				out = append(out, identifiers(l)...)
			}
		}
		return out
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var out []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				out = append(out, identifiers(a)...)
			}
		}
		return out
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func vars(t *template.Template) []string {
	var out []string
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		for _, n := range tt.Root.Nodes {
			for _, v := range identifiers(n) {
				out = append(out, strings.ToLower(v))
			}
		}
	}
	return out
}

// cutAfterResponse drops every node after the first {{ .Response }} (Ollama's deleteNode).
func cutAfterResponse(n parse.Node) parse.Node {
	cut := false
	fn := func(n parse.Node) bool {
		if f, ok := n.(*parse.FieldNode); ok && slices.Contains(f.Ident, "Response") {
			cut = true
			return false
		}
		return cut
	}
	var walk func(n parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if fn(n) {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				if m := walk(c); m != nil {
					nodes = append(nodes, m)
				}
			}
			t.Nodes = nodes
			return t
		case *parse.IfNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.WithNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.RangeNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.BranchNode:
			t.List = walk(t.List).(*parse.ListNode)
			if t.ElseList != nil {
				t.ElseList = walk(t.ElseList).(*parse.ListNode)
			}
		case *parse.ActionNode:
			m := walk(t.Pipe)
			if m == nil {
				return nil
			}
			t.Pipe = m.(*parse.PipeNode)
		case *parse.PipeNode:
			var cmds []*parse.CommandNode
			for _, c := range t.Cmds {
				var as []parse.Node
				for _, a := range c.Args {
					if m := walk(a); m != nil {
						as = append(as, m)
					}
				}
				if len(as) == 0 {
					return nil
				}
				c.Args = as
				cmds = append(cmds, c)
			}
			if len(cmds) == 0 {
				return nil
			}
			t.Cmds = cmds
		}
		return n
	}
	return walk(n)
}

func parseTemplate(s string) (*template.Template, error) {
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, err
	}
	vs := vars(t)
	if !slices.Contains(vs, "messages") && !slices.Contains(vs, "response") {
		t.Tree.Root.Nodes = append(t.Tree.Root.Nodes, &parse.ActionNode{
			NodeType: parse.NodeAction,
			Pipe: &parse.PipeNode{NodeType: parse.NodePipe, Cmds: []*parse.CommandNode{{
				NodeType: parse.NodeCommand,
				Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
			}}},
		})
	}
	return t, nil
}

func render(j job) (string, error) {
	t, err := parseTemplate(j.Template)
	if err != nil {
		return "", err
	}
	if j.ParseOnly {
		return "", nil
	}
	msgs := make([]Message, 0, len(j.Messages)+1)
	if j.System != "" && (len(j.Messages) == 0 || j.Messages[0].Role != "system") {
		msgs = append(msgs, Message{Role: "system", Content: j.System})
	}
	for _, m := range j.Messages {
		msg := Message{Role: m.Role, Content: m.Content, Thinking: m.Thinking}
		for i, tc := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, ToolCall{Function: ToolCallFunction{Index: i, Name: tc.Function.Name, Arguments: tc.Function.Arguments}})
		}
		msgs = append(msgs, msg)
	}
	// collate: system messages joined; consecutive same-role messages merged (not tool)
	var systems []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			systems = append(systems, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	system := strings.Join(systems, "\n\n")
	var b bytes.Buffer
	if slices.Contains(vars(t), "messages") {
		err := t.Execute(&b, map[string]any{
			"System": system, "Messages": collated, "Tools": j.Tools, "Response": "",
			"Think": false, "ThinkLevel": "", "IsThinkSet": false,
		})
		return b.String(), err
	}
	// legacy mode: one execution per user/assistant pair
	system = ""
	var prompt, response string
	exec := func(tt *template.Template) error {
		err := tt.Execute(&b, map[string]any{
			"System": system, "Prompt": prompt, "Response": response,
			"Think": false, "ThinkLevel": "", "IsThinkSet": false,
		})
		system, prompt, response = "", "", ""
		return err
	}
	for _, m := range collated {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := exec(t); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := exec(t); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	tree := parse.Tree{Root: cutAfterResponse(t.Root.Copy()).(*parse.ListNode)}
	last := template.Must(template.New("").Funcs(funcs).AddParseTree("", &tree))
	if err := exec(last); err != nil {
		return "", err
	}
	return b.String(), nil
}

func main() {
	var in struct {
		Jobs []job `json:"jobs"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	out := make([]result, len(in.Jobs))
	for i, j := range in.Jobs {
		s, err := render(j)
		if err != nil {
			e := err.Error()
			out[i].Error = &e
		} else {
			out[i].Output = &s
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"results": out}); err != nil {
		os.Exit(1)
	}
}
