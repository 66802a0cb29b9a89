;; A component with no code that imports `local:greeter-demo/greet` (see
;; wit/greeter-demo/greeter.wit) and exports the same instance: linked between
;; `greet-http` and `greeter`, it tests a link whose provider has links of its own.
(component
  (import "local:greeter-demo/greet" (instance $greet
    (type $greeting (record (field "text" string) (field "chars" u32)))
    (export "greeting" (type $greeting-export (eq $greeting)))
    (export "counter" (type $counter (sub resource)))
    (export "greet" (func (param "name" string) (result string)))
    (type $greetings (list $greeting-export))
    (export "greet-all" (func (param "names" (list string)) (result $greetings)))
    (type $checked (result string (error string)))
    (export "checked-greet" (func (param "name" string) (result $checked)))
    (type $own (own $counter))
    (type $borrow (borrow $counter))
    (export "[constructor]counter" (func (param "prefix" string) (result $own)))
    (export "[method]counter.next" (func (param "self" $borrow) (param "name" string) (result string)))
    (export "[method]counter.count" (func (param "self" $borrow) (result u32)))
  ))
  (export "local:greeter-demo/greet" (instance $greet))
)
