console.log("openshell");
